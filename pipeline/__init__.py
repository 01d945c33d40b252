"""The run: the `nodd` CLI, data loading and packing, the training engines and trainer,
checkpoints and metrics, sampling, evaluation and reports, tokenizer training, the demo, and
job submission through `cluster/`. See docs/architecture.md for the whole map."""
