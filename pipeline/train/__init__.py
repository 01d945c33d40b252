"""`nodd train`: config, the training loop, checkpoints, metrics.

  config.py       TrainConfig (model, data, parallel, optim, train sections)
  checkpoint.py   atomic torch.distributed.checkpoint saves with loader state and RNG, keep-last-K
  optim.py        AdamW, warmup + cosine schedule, gradient clipping across meshes
  loop.py         train(cfg): the loop (one process or many; the native engine)
  launch.py       --nproc N: start torchrun on this machine
"""
