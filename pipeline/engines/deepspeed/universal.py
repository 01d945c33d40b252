"""Resuming a DeepSpeed checkpoint on another data-parallel size: DeepSpeed's universal
checkpoint.

ZeRO-1/2 files hold each rank's slice of flat fp32 buffers, so they load only on the data-parallel
size that wrote them. DeepSpeed's `ds_to_universal` rewrites them as one folder per parameter
(fp32 weights, Adam moments, whole), which `load_checkpoint` with `load_universal` slices for
the new size. nodd converts once, next to the original (`deepspeed/state_universal/`, the
original untouched; an interrupted conversion leaves only a `.partial` folder, redone next time).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch.distributed as dist

from core.errors import DataError
from pipeline.distributed import DistInfo

UNIVERSAL_TAG = "state_universal"


def reshardable(saved: dict, layout: dict) -> bool:
    """Whether a checkpoint written under `saved` loads under `layout` through a universal copy:
    data parallel only (no pipeline on either side), ZeRO-1/2, the same precision."""
    return (saved["pp"] == layout["pp"] == 1 and saved["precision"] == layout["precision"]
            and saved["zero_stage"] in (1, 2) and layout["zero_stage"] in (1, 2))


def universal_copy(checkpoints: Path, tag: str, info: DistInfo) -> str:
    """The universal copy of `checkpoints/tag` (made by rank 0 if missing; every rank waits):
    the tag to load with `load_universal`."""
    target = checkpoints / UNIVERSAL_TAG
    if info.is_main and not target.is_dir():
        partial = checkpoints / f"{UNIVERSAL_TAG}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                   str(checkpoints / tag), "--output_folder", str(partial), "--inject_missing_state",
                   "--num_extract_workers", "1", "--num_merge_workers", "1"]
        done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
        if done.returncode != 0:
            raise DataError(f"DeepSpeed could not convert {checkpoints / tag} to a universal checkpoint (to resume on "
                            f"another data-parallel size): {done.stderr.strip()[-1500:]}\nResume on the layout that "
                            "wrote it, or start a new run from its export/ with train.init_from")
        os.replace(partial, target)
    if dist.is_initialized():
        dist.barrier()
    return UNIVERSAL_TAG
