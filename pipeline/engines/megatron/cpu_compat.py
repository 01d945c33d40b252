"""megatron-core on a machine without a GPU: the few CUDA calls it makes, pointed at the CPU.

megatron-core 0.16 assumes CUDA in a handful of places even with its local (non-Transformer-
Engine) modules. Measured here (ENVIRONMENT.md, "megatron-core 0.16.1 on CPU" in docs/engines.md):

  torch.cuda.current_device()     GlobalMemoryBuffer (attention scores), p2p and the pipeline
                                  schedules allocate on it: answered with "cpu"
  torch.cuda.synchronize()        p2p communication, timers: nothing to wait for on a CPU
  the CUDA RNG-state tracker      DotProductAttention's dropout forks it even at p=0: megatron's
                                  own no-op tracker (nodd trains without dropout and seeds its
                                  noise draws itself)
  device="cuda" literals          the optimizer's overflow buffer, DDP's buffers, the schedules'
  and tensor.type() checks        zeros, `.cuda()` calls, the optimizer's "torch.cuda.FloatTensor" checks: `cuda_to_cpu()`, a TorchFunctionMode
                                  that the engine enters only around megatron's own calls (the
                                  build, the schedule, the optimizer step), so nodd's model code
                                  does not pay for an interposed Python call on every op

Active only when torch sees no GPU, switched on once per process and logged, so that a CPU run
never hides these patches and a GPU run never has them. Everything else in the engine is the
same code on both.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import torch
from torch.overrides import TorchFunctionMode

log = logging.getLogger(__name__)
_enabled = False


def enable_if_no_gpu() -> bool:
    """Patch the CUDA calls when there is no GPU; True when the layer is (now) on."""
    global _enabled
    if torch.cuda.is_available():
        return False
    if _enabled:
        return True
    from megatron.core.tensor_parallel import random as megatron_random

    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda *args, **kwargs: None
    megatron_random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
    _enabled = True
    log.warning("megatron-core on CPU: torch.cuda.current_device/synchronize and megatron's RNG tracker "
                "are patched for this process (pipeline/engines/megatron/cpu_compat.py)")
    return True


def _is_cuda(device) -> bool:
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, int) and not isinstance(device, bool)  # a bare index means a CUDA device


class _CudaToCpu(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:  # the optimizer's type checks
            return func(*args).replace("torch.", "torch.cuda.", 1)
        if _is_cuda(kwargs.get("device")):
            kwargs = {**kwargs, "device": "cpu"}
        if func is torch.Tensor.to and args and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


def cuda_to_cpu():
    """A context in which megatron's CUDA allocations land on the CPU (a no-op with a GPU)."""
    return _CudaToCpu() if _enabled else nullcontext()
