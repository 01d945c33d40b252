"""Prefetcher: the next steps' packed batches made in a background thread while this step computes.

    batches = Prefetcher(loader, per_step=grad_accum, depth=2)
    step_batches = batches.next_step()    # grad_accum PackedBatches, packed ahead of time
    batches.state_dict()                  # the loader's state right after the batches handed out
    batches.close()

Reading shards, building samples and best-fit packing are Python and numpy work that mostly holds
the GIL, while the step's torch kernels release it, so the two overlap. The thread is the only
user of the loader once started; each item it queues carries the loader's state as of that item,
so a checkpoint records what training consumed, not what was packed ahead, and resuming repeats
an uninterrupted run exactly. `depth=0` packs inside the step (no thread), with the same interface.

When it pays (`prefetch_depth`): on a GPU, whose host cores idle while the step runs. On a CPU the
step's intra-op threads already use every core, and a packing thread beside them stalls their
barriers: the demo model's one-process step ran 1.34x slower with it, and 2 one-thread processes
on 2 cores the same (bench/train.py). So `data.prefetch = -1` (auto) packs ahead on GPUs only.
An exception in the thread (a corrupt shard, say) is raised by the `next_step` that would have
returned its batches, with its original traceback.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any

import torch

from model.batch import PackedBatch
from pipeline.data.loader import PackedLoader


AUTO_DEPTH_ON_GPU = 2  # steps packed ahead: one to hide the packing, one for a slow shard read


def prefetch_depth(setting: int, device: torch.device) -> int:
    """data.prefetch resolved for `device`: -1 (auto) packs ahead on accelerators only."""
    if setting >= 0:
        return setting
    return AUTO_DEPTH_ON_GPU if device.type != "cpu" else 0


@dataclass
class _Item:
    batches: list[PackedBatch]
    state: dict[str, Any]  # loader.state_dict() after these batches
    epoch: int
    efficiency: float


class Prefetcher:
    def __init__(self, loader: PackedLoader, per_step: int, depth: int = 2):
        self.loader, self.per_step, self.depth = loader, per_step, depth
        self._current = self._snapshot([])  # state before any batch is handed out
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = None
        if depth > 0:
            self._thread = threading.Thread(target=self._fill, name="nodd-prefetch", daemon=True)
            self._thread.start()

    def _snapshot(self, batches: list[PackedBatch]) -> _Item:
        return _Item(batches, self.loader.state_dict(), self.loader.reader.epoch, self.loader.efficiency)

    def _produce(self) -> _Item:
        return self._snapshot([self.loader.next_batch() for _ in range(self.per_step)])

    def _fill(self) -> None:
        while not self._stop.is_set():
            try:
                item: _Item | BaseException = self._produce()
            except BaseException as exc:  # handed to the training thread, which raises it
                item = exc
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def next_step(self) -> list[PackedBatch]:
        if self._thread is None:
            item = self._produce()
        else:
            while True:
                try:
                    item = self._queue.get(timeout=1.0)
                    break
                except queue.Empty:
                    if not self._thread.is_alive():
                        raise RuntimeError("the batch prefetch thread ended without a batch or an error")
            if isinstance(item, BaseException):
                raise item
        self._current = item
        return item.batches

    # What the trainer reads about the data, as of the batches handed out so far.
    def state_dict(self) -> dict[str, Any]:
        return self._current.state

    @property
    def epoch(self) -> int:
        return self._current.epoch

    @property
    def efficiency(self) -> float:
        return self._current.efficiency

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
