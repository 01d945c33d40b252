"""The run: CLI, config loading, errors, logging, tokenizer training, demo (training, sampling
and evaluation join later). `pipeline.errors` and `pipeline.config` are standard-library-only
leaves that every package may import."""
