"""A DeepSpeed ZeRO checkpoint resumes on another data-parallel size (and ZeRO stage 1 <-> 2)
through DeepSpeed's universal checkpoint: the steps after the resume are the ones a one-process
native run takes from the same weights and Adam state (gloo, CPU, tiny model)."""

import json

import pytest
import torch.multiprocessing as mp
from support.parity import checkpoint_worker, free_port, reference

from pipeline.engines.deepspeed.universal import UNIVERSAL_TAG

SAVED_AT, STEPS = 2, 4  # two steps after the resume: the loaded weights, then the loaded moments
DP2, ONE = ({"dp_shard": 2}, 2), ({}, 1)


def run(layout, world, steps, folder, out, zero_stage):
    settings = {"deepspeed.zero_stage": zero_stage}
    mp.spawn(checkpoint_worker, args=(world, "deepspeed", layout, steps, "transfusion", free_port(), str(folder),
                                      str(out), "fp32", None, settings), nprocs=world, join=True)
    return json.loads(out.read_text())["losses"]


@pytest.mark.slow
@pytest.mark.parametrize("saved, resumed", [
    pytest.param((DP2, 2), (ONE, 2), id="zero2 dp2 -> zero2 1 process"),
    pytest.param((ONE, 1), (DP2, 2), id="zero1 1 process -> zero2 dp2"),
])
def test_a_zero_checkpoint_resumes_on_another_data_parallel_size(saved, resumed, tmp_path):
    (layout, stage), (new_layout, new_stage) = saved, resumed
    folder = tmp_path / "step-2"
    folder.mkdir()
    before = run(*layout, (0, SAVED_AT), folder, tmp_path / "before.json", stage)
    after = run(*new_layout, (SAVED_AT, STEPS), folder, tmp_path / "after.json", new_stage)
    assert (folder / "deepspeed" / UNIVERSAL_TAG).is_dir() and (folder / "deepspeed" / "state").is_dir()
    expected = reference(*layout, STEPS, "transfusion", resumed_as=new_layout, resumed_at=SAVED_AT)["losses"]
    for a, b in zip(before + after, expected):
        assert abs(a - b) < 1e-5, (before, after, expected)
