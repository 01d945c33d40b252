"""Tokenizers: image autoencoders (continuous KL, discrete VQ / FSQ) and text tokenizers.

Image side: build an `ImageTokenizer` from a `TokenizerConfig`, train it with `fit`, measure
it with `evaluate`, persist it with `save_tokenizer` / `load_tokenizer` (fingerprinted).
A pretrained diffusers VAE can stand in via `load_diffusers_vae`. Text side: `ByteTokenizer`
(default) or byte-level BPE (`train_bpe`, `load_text_tokenizer`).
"""

from .autoencoder import ImageTokenizer, TokenizerOutput
from .config import TokenizerConfig
from .diffusers_vae import DiffusersVAE, load_diffusers_vae
from .fsq import FSQ
from .io import compute_fingerprint, load_tokenizer, save_tokenizer, tokenizer_fingerprint
from .kl import DiagonalGaussian
from .loading import image_tokenizer_fingerprint, is_diffusers_vae, load_image_tokenizer
from .nets import Decoder, Encoder
from .text import BPETokenizer, ByteTokenizer, TextTokenizer, load_text_tokenizer, train_bpe
from .training import evaluate, fit
from .vq import VectorQuantizer, codebook_utilisation, perplexity

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "Decoder",
    "DiagonalGaussian",
    "DiffusersVAE",
    "Encoder",
    "FSQ",
    "ImageTokenizer",
    "TextTokenizer",
    "TokenizerConfig",
    "TokenizerOutput",
    "VectorQuantizer",
    "codebook_utilisation",
    "compute_fingerprint",
    "evaluate",
    "fit",
    "image_tokenizer_fingerprint",
    "is_diffusers_vae",
    "load_image_tokenizer",
    "load_diffusers_vae",
    "load_text_tokenizer",
    "load_tokenizer",
    "perplexity",
    "save_tokenizer",
    "tokenizer_fingerprint",
    "train_bpe",
]
