"""ModelConfig: every knob of the mixed text-and-latent transformer, validated up front.

One config serves the three generation modes (README, "The model"); fields of
the other modes are ignored but still validated, so switching `mode` never meets a broken value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from core.errors import ConfigError


@dataclass
class ModelConfig:
    """Configuration of a `MultimodalModel`.

    Fields:
        mode: "transfusion" (noised latent patches, bidirectional inside an image, velocity
            MSE), "mar" (latent tokens one by one, causal, small flow-matching MLP head per
            token) or "discrete" (VQ/FSQ code ids after the text vocabulary, cross-entropy).
        text_vocab_size: ids of the text tokenizer (its pad/bos/eos included). The model adds
            begin/end-of-image ids right after it, then (discrete mode) the image codes.
        codebook_size: discrete mode: the image tokenizer's vocabulary (VQ K or FSQ product).
        latent_channels: continuous modes: channels C of the tokenizer's latent.
        latent_size: side of the latent grid the data will hold (8 for 32x32 images and a 4x
            tokenizer); checked against `patch_size` here so a bad pair fails before training.
        patch_size: p; a latent (C, H, W) becomes (H/p)*(W/p) tokens of C*p*p values.
            Discrete mode: codes are single tokens, so p must be 1.
        width, depth, heads: the backbone (d_model, layers, query heads).
        kv_heads: grouped-query attention key/value heads (0 = heads); must divide heads.
        mlp_hidden: SwiGLU hidden size (0 = 8/3 * width rounded up to a multiple of 64).
        qk_norm: RMSNorm on queries and keys per head (stabilises attention logits).
        rope_theta: rotary base. Positions are 3-D (t, h, w) "multimodal RoPE": text uses the
            same value on all three axes; image/video patches add their grid offsets to the
            position where the image starts, and text after it resumes past the image.
        norm_eps: RMSNorm epsilon.
        patch_positions: add an absolute embedding of each image patch's (t, h, w) offsets in
            its image to its input (DiT and SD3 add one). Rotary positions alone are relative and
            leave the values position-free, so "which colour is on the left" takes the model
            several layers to work out; with this it is read off the patch itself.
        attention: "sdpa" (dense boolean mask; reference, trains everywhere), "flex"
            (FlexAttention block mask; on CPU forward/no-grad only), "flash" (flash-attn varlen,
            CUDA, document-causal masks only: not transfusion), "auto" (fastest valid one).
        conv_adapter: Transfusion's U-Net variant: a small conv block before patchifying and
            after unpatchifying latents, instead of a bare linear projection.
        adapter_channels: hidden channels of that conv block.
        image_loss_weight: weight of the image loss against text cross-entropy. Transfusion's
            lambda (the paper used 5); mar and discrete use it too (1 is their usual value).
        time_sampling: diffusion time t in [0, 1] (0 = noise, 1 = data) during training:
            "logit_normal" (SD3; most weight mid-path) or "uniform".
        mar_order: mar mode: "raster", or "random" (a fresh order per image; every input also
            carries a query for the position of the token to predict next): autoregressive,
            one token at a time. "masked": MAR as published: image tokens attend to each other
            bidirectionally, a random fraction of each generated image (MAR's masking ratio, at
            least `mar_mask_min`) is replaced by a learned mask embedding and the transformer's
            output at each masked position conditions the head; sampling fills the image in
            over a few steps, several tokens each (model/sampling/images.py).
        mar_mask_min: mar_order="masked": the smallest fraction of an image masked in training
            (the fraction is drawn from a normal around 1 with std 0.25, clipped to [min, 1]).
        var_scales: next-scale prediction (VAR, model/scales.py) in mar mode (continuous residual
            scales, the flow head) or discrete mode (a code pyramid, cross-entropy): the token grid
            of each scale, coarse to fine, the last the full grid latent_size / patch_size, e.g.
            [1, 2, 4, 8]. Empty (default): off. Every scale is one block: bidirectional inside,
            causal across scales; one transformer pass per scale when sampling.
        head_width, head_depth: mar mode: the per-token MLP head (residual blocks with adaptive
            norm on the transformer output z and the time); head_width 0 = width.
        diffusion_batch_mul: mar mode: noise draws per token per step (MAR used 4).
        tie_embeddings: share the input embedding with the LM output projection.
        init_std: std of the normal init of linear and embedding weights.
        attention_head_dim: channels per attention head (0 = width / heads); Qwen3 checkpoints
            set it apart from the width.
        init_from: a local Hugging Face checkpoint folder of a Llama, Mistral or Qwen3 LLM
            (model/pretrained.py): its config.json fixes width, depth, heads, kv_heads,
            attention_head_dim, mlp_hidden, norm_eps, rope_theta, qk_norm, tie_embeddings and
            text_vocab_size (a value set here that differs from it is an error), and training
            starts from its backbone, text embeddings and LM head; the image parts start fresh.
    """

    mode: Literal["transfusion", "mar", "discrete"] = "transfusion"
    text_vocab_size: int = 259
    codebook_size: int = 0
    latent_channels: int = 4
    latent_size: int = 8
    patch_size: int = 1
    width: int = 256
    depth: int = 4
    heads: int = 4
    kv_heads: int = 0
    mlp_hidden: int = 0
    qk_norm: bool = True
    rope_theta: float = 10000.0
    patch_positions: bool = False
    norm_eps: float = 1e-5
    attention: Literal["auto", "sdpa", "flex", "flash"] = "auto"
    conv_adapter: bool = False
    adapter_channels: int = 64
    image_loss_weight: float = 5.0
    time_sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    mar_order: Literal["raster", "random", "masked"] = "raster"
    mar_mask_min: float = 0.7
    var_scales: list[int] = field(default_factory=list)
    head_width: int = 0
    head_depth: int = 3
    diffusion_batch_mul: int = 4
    tie_embeddings: bool = False
    init_std: float = 0.02
    attention_head_dim: int = 0
    init_from: str = ""

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.attention_head_dim or self.width // self.heads

    @property
    def num_kv_heads(self) -> int:
        return self.kv_heads or self.heads

    @property
    def hidden(self) -> int:
        return self.mlp_hidden or 64 * -(-(8 * self.width) // (3 * 64))

    @property
    def boi_id(self) -> int:
        return self.text_vocab_size

    @property
    def eoi_id(self) -> int:
        return self.text_vocab_size + 1

    @property
    def code_offset(self) -> int:
        """Id of image code 0 in discrete mode."""
        return self.text_vocab_size + 2

    @property
    def vocab_size(self) -> int:
        return self.code_offset + (self.codebook_size if self.mode == "discrete" else 0)

    @property
    def patch_dim(self) -> int:
        return self.latent_channels * self.patch_size**2

    @property
    def next_scale_images(self) -> bool:
        """Generated images are predicted scale by scale (VAR; model/scales.py)."""
        return bool(self.var_scales) and self.mode in ("mar", "discrete")

    @property
    def bidirectional_images(self) -> bool:
        """Image tokens attend to their whole image (transfusion, masked mar) or scale block (VAR),
        not causally."""
        return (self.mode == "transfusion" or (self.mode == "mar" and self.mar_order == "masked")
                or self.next_scale_images)

    @property
    def next_token_images(self) -> bool:
        """Each image token is predicted from the position before it (discrete, mar in order)."""
        if self.next_scale_images:
            return False
        return self.mode == "discrete" or (self.mode == "mar" and self.mar_order != "masked")

    @property
    def own_position_images(self) -> bool:
        """The head reads each generated token's own output (masked mar, VAR), not the one before."""
        return self.mode == "mar" and (self.mar_order == "masked" or self.next_scale_images)

    @property
    def mar_head_width(self) -> int:
        return self.head_width or self.width

    def validate(self) -> None:
        if self.init_from:  # the checkpoint's shapes first: every check below applies to them
            from model.pretrained import PretrainedLLM

            PretrainedLLM(self.init_from).apply_shapes(self)
        positive = ("text_vocab_size", "latent_channels", "latent_size", "patch_size", "width", "depth", "heads",
                    "head_depth", "diffusion_batch_mul", "adapter_channels")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.attention_head_dim < 0:
            raise ConfigError(f"model.attention_head_dim must be >= 0 (0 = width / heads), got {self.attention_head_dim}")
        if self.width % self.heads and not self.attention_head_dim:
            raise ConfigError(f"model.width={self.width} is not divisible by model.heads={self.heads}; "
                              "choose heads that divide the width")
        if self.num_kv_heads < 1 or self.heads % self.num_kv_heads:
            raise ConfigError(f"model.kv_heads={self.kv_heads} must divide model.heads={self.heads} "
                              "(grouped-query attention shares each key/value head between heads/kv_heads queries)")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ConfigError(f"head dim width/heads = {self.head_dim} must be even and >= 6 for 3-axis rotary "
                              "positions; use fewer heads or a larger width")
        if self.latent_size % self.patch_size:
            raise ConfigError(f"model.patch_size={self.patch_size} does not divide the latent grid "
                              f"model.latent_size={self.latent_size}; pick a divisor of {self.latent_size}")
        if self.mode == "discrete":
            if self.codebook_size < 2:
                raise ConfigError("model.mode='discrete' needs model.codebook_size (the VQ/FSQ tokenizer's "
                                  "vocabulary, e.g. 1000 for fsq levels [8, 5, 5, 5])")
            if self.patch_size != 1:
                raise ConfigError("model.mode='discrete' places one code per token: set model.patch_size=1")
        if self.mode == "transfusion" and self.attention == "flash":
            raise ConfigError(
                "model.attention='flash' cannot run model.mode='transfusion': flash-attn varlen only "
                "expresses document-causal masks, and transfusion attends bidirectionally inside each image. "
                "Use attention='flex' (GPU training) or 'sdpa', or 'auto'"
            )
        if self.conv_adapter and self.mode != "transfusion":
            # A 3x3 conv over a whole image would leak the next tokens into each input in mar
            # (and discrete mode embeds code ids, not latents).
            raise ConfigError("model.conv_adapter is transfusion-only: it sees whole images at once, which "
                              "would show mar/discrete each token's successors")
        if self.conv_adapter and self.adapter_channels % 8:
            raise ConfigError(f"model.adapter_channels={self.adapter_channels} must be a multiple of 8 "
                              "(the conv adapter uses GroupNorm with 8 groups)")
        if self.mar_order not in ("raster", "random", "masked"):
            raise ConfigError(f"model.mar_order must be raster, random or masked, got {self.mar_order!r}")
        if not 0 < self.mar_mask_min <= 1:
            raise ConfigError(f"model.mar_mask_min must be in (0, 1], got {self.mar_mask_min}")
        if self.bidirectional_images and self.attention == "flash" and self.mode != "transfusion":
            raise ConfigError("model.attention='flash' cannot run mar_order='masked' or var_scales: their image tokens "
                              "attend to each other bidirectionally; use attention='flex', 'sdpa' or 'auto'")
        if self.var_scales:
            self._validate_scales()
        if self.image_loss_weight < 0 or self.init_std <= 0:
            raise ConfigError("model.image_loss_weight must be >= 0 and model.init_std > 0")

    def _validate_scales(self) -> None:
        scales, side = list(self.var_scales), self.latent_size // self.patch_size
        if self.mode not in ("mar", "discrete"):
            raise ConfigError(f"model.var_scales is next-scale prediction for mode='mar' (continuous) or 'discrete', "
                              f"not mode={self.mode!r}; remove it or change the mode")
        if self.mode == "mar" and self.mar_order != "raster":
            raise ConfigError(f"model.var_scales orders the image by scale: it cannot also use "
                              f"mar_order={self.mar_order!r}; leave mar_order at 'raster'")
        if any(not isinstance(s, int) or s < 1 for s in scales) or scales != sorted(set(scales)):
            raise ConfigError(f"model.var_scales must be increasing positive ints, got {scales}")
        if scales[-1] != side:
            raise ConfigError(f"model.var_scales must end at the full token grid latent_size / patch_size = {side}, "
                              f"got {scales}; e.g. {[s for s in (1, 2, 4, 8, 16, 32) if s < side] + [side]}")
