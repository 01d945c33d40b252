"""The torch-native engine: ParallelConfig -> DeviceMesh -> parallelize(model) (tensor parallel,
then FSDP2), the reference for every other engine."""
