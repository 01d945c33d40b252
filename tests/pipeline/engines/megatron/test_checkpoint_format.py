"""The megatron payload formats in one process: format 2 (dist_checkpointing) resumes exactly,
a tied LM head included; format 1 (per-rank torch.save files, what nodd wrote before
2026-12-07) still resumes on its own layout and names what changed on another."""

import json

import pytest
import torch
from support.parity import LR, MICRO, batches, seed_of, train_config

from core.errors import DataError
from pipeline.distributed import DistInfo
from pipeline.engines.megatron.engine import MegatronEngine
from pipeline.engines.megatron.state import LAYOUT_FILE

ONE = DistInfo(0, 1, torch.device("cpu"))


def steps(engine, first, last):
    data = batches(engine.cfg.model, 0, last)
    return [engine.train_step(data[s], [seed_of(s, m, 0) for m in range(MICRO)], LR).losses["loss"]
            for s in range(first, last)]


def write_format_1(engine, folder):
    """The payload as nodd's per-rank writer laid it out (plain optimizer, one process)."""
    entries = [{"state_dict": opt.state_dict()} for opt in engine.optimizer.chained_optimizers]
    torch.save({"model": engine.chunks[0].state_dict(), "optimizers": entries}, folder / "megatron-rank-00000.pt")
    layout = {k: v for k, v in engine._layout().items() if k != "virtual_stages"}  # not written then
    (folder / LAYOUT_FILE).write_text(json.dumps(layout))


@pytest.mark.parametrize("mode, options", [("transfusion", {}), ("discrete", {"tie_embeddings": True})])
def test_format_2_resumes_exactly(megatron_one_process, tmp_path, mode, options):
    cfg = train_config(mode, {}, "megatron", model_options=options)
    trained = MegatronEngine(cfg, ONE)
    steps(trained, 0, 2)
    trained.save(tmp_path)
    assert json.loads((tmp_path / LAYOUT_FILE).read_text())["format"] == 2
    resumed = MegatronEngine(cfg, ONE)
    resumed.load(tmp_path)
    assert steps(resumed, 2, 4) == steps(trained, 2, 4)


def test_format_1_resumes_on_its_layout_and_names_another(megatron_one_process, tmp_path):
    cfg = train_config("transfusion", {}, "megatron")
    trained = MegatronEngine(cfg, ONE)
    steps(trained, 0, 2)
    write_format_1(trained, tmp_path)
    resumed = MegatronEngine(cfg, ONE)
    resumed.load(tmp_path)
    assert steps(resumed, 2, 4) == steps(trained, 2, 4)

    layout = json.loads((tmp_path / LAYOUT_FILE).read_text())
    (tmp_path / LAYOUT_FILE).write_text(json.dumps({**layout, "tp": 2, "world": 2}))
    with pytest.raises(DataError, match=r"format 1\) under another layout \(world 2 -> 1, tp 2 -> 1\).*init_from"):
        MegatronEngine(cfg, ONE).load(tmp_path)
