"""Process-wide settings that make CPU training steps faster without changing what they compute
(beyond flushing numbers under 1.2e-38 to zero, as GPU kernels commonly do).

    tune_cpu_runtime()      # once, before the model runs; the trainer and bench/ call it

Measured on the matched benchmark model's fp32 step (bench/README.md):
  * glibc returns every freed block over 128 KiB to the kernel (munmap, heap trim), so each
    step's fresh activations page-faulted anew: about 38,000 page faults a step. Keeping freed
    memory (mmap threshold 32 MiB, no trimming) leaves about 250.
  * Denormal gradients made silu_backward and the SwiGLU product several times slower; flushing
    them (FTZ/DAZ) removes that.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

import torch

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc refuses more (HEAP_MAX_SIZE / 2 on 64-bit)


def tune_cpu_runtime() -> list[str]:
    """Apply what this platform supports; returns what was applied (for logs and benchmarks)."""
    applied = []
    if torch.set_flush_denormal(True):
        applied.append("denormals flushed")
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name) if libc_name else None
        if libc is not None and hasattr(libc, "mallopt") and libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) \
                and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1):
            applied.append("freed memory kept by malloc")
    except OSError:  # not glibc (macOS, musl): nothing to tune
        pass
    log.debug("cpu runtime: %s", ", ".join(applied) or "nothing applied")
    return applied
