"""The networks: parallelism-free, imports only torch, einops (and safetensors/tokenizers for the
tokenizers) plus the standard-library `core`.

  config.py         ModelConfig: mode (transfusion | mar | discrete), sizes, backend, heads
  batch.py          Document -> PackedBatch (the contract every engine consumes), patchify
  masks.py          attention rules derived from segment/span ids (dense, flex block mask, varlen)
  rope.py           3-axis multimodal rotary positions
  attention.py      sdpa / flex / flash backends, `auto` selection, KV cache
  transformer.py    the backbone (RMSNorm, SwiGLU, GQA, qk-norm): hidden states in, out
  adapters.py       latent patches in/out (linear or conv U-Net variant), time and query embeddings
  heads.py          MAR's per-token flow-matching MLP head
  flow.py           rectified flow: noising, ODE integration (Euler/Heun), guidance
  multimodal.py     MultimodalModel: embed -> backbone -> heads, loss breakdown per mode
  sampling/         text (KV cache), captioning, image/video generation per mode
  tokenizers/       image/video autoencoders (KL, VQ, FSQ) and text tokenizers
"""
