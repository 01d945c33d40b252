"""A megatron checkpoint resumes under another layout: saved under one tp / pp / dp (and
optimizer: plain or distributed), loaded under another, the next step is the step a one-process
native run takes from the same weights and Adam state (gloo, CPU, tiny model)."""

import json

import pytest
import torch.multiprocessing as mp
from support.parity import BF16_TOLERANCE, checkpoint_worker, free_port, reference

from pipeline.engines.megatron.state import LAYOUT_FILE

# two steps after the resume: the first one's loss shows the loaded weights, the second's the
# loaded Adam moments and step count (the first update used them)
SAVED_AT, STEPS = 2, 4
TP2, DP2, ONE = ({"tp": 2, "dp_shard": 1}, 2), ({"dp_shard": 2}, 2), ({}, 1)
PP2 = ({"pp": 2, "dp_shard": 1}, 2)
INTERLEAVED = {"megatron.virtual_stages": 2}  # two chunks per pipeline rank (4 layers)
ROWS = [  # (saved under, resumed under, precision, megatron settings when saved)
    pytest.param(TP2, ONE, "fp32", {}, id="tp2 -> 1 process"),
    pytest.param(TP2, DP2, "fp32", {}, id="tp2 -> dp2 distributed optimizer"),
    pytest.param(DP2, PP2, "fp32", {}, id="dp2 distributed optimizer -> pp2"),
    pytest.param(DP2, TP2, "bf16", {}, id="bf16 dp2 distributed optimizer -> tp2"),
    pytest.param(PP2, ONE, "fp32", INTERLEAVED, id="pp2 interleaved -> 1 process"),
]


def run(layout, world, steps, folder, out, precision, model, settings):
    mp.spawn(checkpoint_worker, args=(world, "megatron", layout, steps, "transfusion", free_port(), str(folder),
                                      str(out), precision, model, settings), nprocs=world, join=True)
    return json.loads(out.read_text())["losses"]


@pytest.mark.slow
@pytest.mark.parametrize("saved, resumed, precision, saved_settings", ROWS)
def test_a_checkpoint_resumes_under_another_layout(saved, resumed, precision, saved_settings, tmp_path):
    folder = tmp_path / "step-2"
    folder.mkdir()
    model = {"depth": 4} if saved_settings else None  # pp2 x 2 virtual stages need 4 layers
    before = run(*saved, (0, SAVED_AT), folder, tmp_path / "before.json", precision, model, saved_settings)
    assert json.loads((folder / LAYOUT_FILE).read_text())["format"] == 2
    # the same model resumed under the default megatron settings (one chunk per rank)
    after = run(*resumed, (SAVED_AT, STEPS), folder, tmp_path / "after.json", precision, model, None)
    expected = reference(*saved, STEPS, "transfusion", model_options=model, precision=precision, resumed_as=resumed,
                         resumed_at=SAVED_AT)["losses"]
    tolerance = 1e-5 if precision == "fp32" else BF16_TOLERANCE * expected[-1]
    for a, b in zip(before + after, expected):
        assert abs(a - b) < tolerance, (before, after, expected)
