"""The networks. `model.tokenizers`: image/video autoencoders (KL, VQ, FSQ) and text tokenizers.
Imports only torch, einops, safetensors, tokenizers and `pipeline.errors`; no parallelism."""
