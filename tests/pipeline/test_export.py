"""The export format: version 1 (a fused, row-interleaved SwiGLU ffn.w13) still reads, exactly."""

import json

import torch

from model.config import ModelConfig
from pipeline.export import EXPORT_VERSION, model_from_weights, read_export, write_export


def test_a_version_1_export_with_fused_w13_reads_into_today_s_model(tmp_path):
    cfg = ModelConfig(width=32, depth=2, heads=2)
    torch.manual_seed(0)
    weights = {k: torch.randn_like(v) for k, v in model_from_weights(cfg, {}, strict=False).state_dict().items()}
    old = {k: v for k, v in weights.items() if ".ffn.w1." not in k and ".ffn.w3." not in k}
    for layer in range(cfg.depth):  # version 1 interleaved the rows: gate_0, up_0, gate_1, up_1, ...
        w1, w3 = (weights[f"backbone.layers.{layer}.ffn.{n}.weight"] for n in ("w1", "w3"))
        old[f"backbone.layers.{layer}.ffn.w13.weight"] = torch.stack([w1, w3], 1).flatten(0, 1)
    meta = {"export_version": 1, "model": {"width": 32, "depth": 2, "heads": 2}}
    write_export(tmp_path, old, meta)
    loaded, _ = read_export(tmp_path)
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    (tmp_path / "model.json").write_text(json.dumps({**meta, "export_version": EXPORT_VERSION}))
    assert "backbone.layers.0.ffn.w13.weight" in read_export(tmp_path)[0]  # only version 1 is converted
