"""`nodd train`: the engine-neutral trainer.

  config.py       TrainConfig (model, data, parallel, optim, train, native sections)
  loop.py         train(cfg): schedule, batches and seeds, metrics, stop flag; any engine
  checkpoint.py   the checkpoint folder protocol (.tmp then rename, meta.json, keep-K, loader
                  state, export/); the engine writes the model and optimizer payload
  metrics.py      FLOPs, MFU, memory; metrics.jsonl, TensorBoard, progress bar
  launch.py       --nproc N: start torchrun on this machine, tied to the launcher (no orphans)
"""
