"""`nodd ablate`: the DD question (Discrete tokens? Diffusion?) as one grid of arms at equal
training FLOPs, with seeds, run through the cluster machinery and collected into report.md.

    nodd ablate --config configs/ablate/dd.toml [--preset quick|full] [--target local|slurm|ray]
                [--seeds N] [--resume] [--dry-run]
    nodd ablate report --config configs/ablate/dd.toml [--preset ...]

spec.py    the config: tokenizers, arms, the step budget, presets
data.py    the data stage: tokenizers trained on the same images, shards per tokenizer
run.py     arms x seeds as jobs (FLOP-matched steps, evaluation at the end of each job)
report.py  tables, plots and the claims, from the arms' eval.json and metrics.jsonl
"""
