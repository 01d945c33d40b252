"""Training engines behind one interface (base.py: Engine, the lazy registry, StepResult) and the
engine-neutral `[parallel]` section (parallel.py). An engine builds the parallel model from
`model/` and a TrainConfig, runs optimisation steps on packed batches, saves and loads its
payload and exports weights in MultimodalModel names. `native/` is the reference every other
engine must match loss for loss (tests/pipeline/engines/test_parity.py)."""
