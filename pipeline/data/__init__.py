"""Training data: shards -> documents -> packed batches, with exact resume.

  config.py    DataConfig (the `data` section of a train config)
  reader.py    ShardReader: shards partitioned by data-parallel rank, deterministic shuffle
  samples.py   SampleBuilder: a shard row -> a Document (task mix, caption dropout, latent
               sampling and normalisation); LatentNorm; tokenizer fingerprint checks
  loader.py    PackedLoader: best-fit packing into fixed-length rows -> model.batch.PackedBatch
"""
