"""Samplers: text (KV-cached), captioning, and image/video generation for every mode."""

from model.sampling.images import generate_images
from model.sampling.text import caption, generate_text, pick

__all__ = ["generate_images", "generate_text", "caption", "pick"]
