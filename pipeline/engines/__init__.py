"""Training engines: build the parallel model from `model/` and a config, run optimisation steps
on packed batches, save and load state. `native` (torch.distributed: FSDP2, DTensor tensor
parallel) is the reference every other engine must match loss for loss."""
