"""placeholder"""
from .config import TokenizerConfig
from .autoencoder import ImageTokenizer, TokenizerOutput
from .training import fit, evaluate
