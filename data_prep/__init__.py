"""Pre-encoding: sources, media decoding, built-in data, Ray stages, the shard contract
(`schema.py`) and verify/inspect. Entry point: `data_prep.prep.run_prep` (`nodd prep`)."""
