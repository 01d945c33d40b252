"""The torch-native engine (`train.engine = "native"`): FSDP2, DTensor tensor parallel and
torch.distributed.pipelining behind the Engine interface; the reference every other engine
matches loss for loss. engine.py is the entry; see docs/architecture.md."""
