"""ShardReader: the rows of one data-parallel rank, in a deterministic shuffled order, resumable.

Each epoch the shards are permuted by (seed, epoch); rank r reads every world-th shard of that
order (or, with fewer shards than ranks, every world-th row of every shard), then a shuffle
buffer mixes rows across shards. The reader never ends: it moves on to the next epoch, so ranks
with a shard more or less than others keep stepping in lockstep.

`split` picks the rows prep marked "train" (the default) or "val" (`split.val_fraction`); shards
of schema version 1 have no split column and count as "train" throughout.

`state_dict()` captures everything (epoch, position, buffer contents, RNG) so a resumed run reads
exactly the rows an uninterrupted one would have.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.errors import DataError
from data_prep import schema

COLUMNS = ["key", "modality", "caption", "text_ids", "latent", "latent_logvar", "latent_shape", "latent_dtype",
           "codes", "codes_shape", "codes_dtype"]


class ShardReader:
    def __init__(self, shard_dirs: list[str], rank: int = 0, world: int = 1, seed: int = 0, shuffle_buffer: int = 0,
                 split: str = "train"):
        self.shards: list[tuple[Path, dict[str, Any]]] = []
        self.manifests: list[schema.Manifest] = []
        for folder in shard_dirs:
            manifest = schema.Manifest.read(folder)
            self.manifests.append(manifest)
            for shard in manifest.shards:
                path = Path(folder) / shard["file"]
                if not path.is_file():
                    raise DataError(f"shard {path} listed in {Path(folder) / schema.MANIFEST} is missing; "
                                    "restore it or rerun `nodd prep` with the same config (it redoes missing units)")
                if schema.shard_split_rows(shard, split):
                    self.shards.append((path, shard))
        if not self.shards and split == "val":
            raise DataError(f"the shards in {', '.join(shard_dirs)} hold no validation rows: rerun `nodd prep` into a "
                            "new out_dir with split.val_fraction=0.02 (or so), or set train.eval_every=0")
        if not self.shards:
            raise DataError(f"no {split!r} rows in the shards of {', '.join(shard_dirs)}")
        self.split = split
        self.rank, self.world, self.seed, self.buffer_size = rank, world, seed, shuffle_buffer
        self.epoch, self.cursor, self.row = 0, 0, 0  # position: epoch, index into this epoch's shards, row in shard
        self.buffer: list[dict[str, Any]] = []
        self.rng = np.random.default_rng([seed, rank, 1])
        self._loaded: tuple[tuple[int, int], list[dict[str, Any]]] | None = None  # ((shard, offset), rows)
        self._verified: set[int] = set()
        self._plan: tuple[int, list[int], list[int]] | None = None  # (epoch, shards, offsets)

    # ---- order --------------------------------------------------------------------------------
    def _epoch_plan(self, epoch: int) -> tuple[list[int], list[int]]:
        """(this rank's shards in order, rows before each in the epoch's order), made once per
        epoch: the reader asks for it on every row."""
        if self._plan is None or self._plan[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards)).tolist()
            shards = order[self.rank::self.world] if len(self.shards) >= self.world else order
            offsets = np.cumsum([0] + [schema.shard_split_rows(self.shards[i][1], self.split)
                                       for i in shards[:-1]]).tolist()
            self._plan = (epoch, shards, offsets)
        return self._plan[1], self._plan[2]

    def _rows_of(self, index: int, offset: int) -> list[dict[str, Any]]:
        """Rows of shard `index` for this rank; `offset` = rows before it in this epoch's order."""
        if self._loaded is None or self._loaded[0] != (index, offset):
            path, info = self.shards[index]
            if index not in self._verified:  # once per process: a corrupt shard is a clear error
                if schema.sha256_file(path) != info.get("sha256"):
                    raise DataError(f"{path} does not match the sha256 in its manifest (corrupt or replaced); "
                                    f"run `nodd shards verify {path.parent}` and rerun prep for the bad units")
                self._verified.add(index)
            if "split" in pq.read_schema(path).names:
                table = pq.read_table(path, columns=COLUMNS + ["split"])
                rows = table.filter(pc.equal(table["split"], self.split)).drop_columns(["split"]).to_pylist()
            else:  # schema version 1: every row trains
                rows = pq.read_table(path, columns=COLUMNS).to_pylist()
            if len(self.shards) < self.world:  # fewer shards than ranks: stripe the epoch's rows
                rows = rows[(self.rank - offset) % self.world::self.world]
            self._loaded = ((index, offset), rows)
        return self._loaded[1]

    def _next_in_order(self) -> dict[str, Any]:
        for _ in range(len(self.shards) + 2):  # at most one full pass of empty shards/epochs
            shards, offsets = self._epoch_plan(self.epoch)
            if self.cursor >= len(shards):
                self.epoch, self.cursor, self.row = self.epoch + 1, 0, 0
                continue
            rows = self._rows_of(shards[self.cursor], offsets[self.cursor])
            if self.row < len(rows):
                self.row += 1
                return rows[self.row - 1]
            self.cursor, self.row = self.cursor + 1, 0
        raise DataError(f"rank {self.rank} of {self.world} gets no rows from these shards")

    def next(self) -> dict[str, Any]:
        if self.buffer_size <= 0:
            return self._next_in_order()
        while len(self.buffer) < self.buffer_size:
            self.buffer.append(self._next_in_order())
        i = int(self.rng.integers(len(self.buffer)))
        row, self.buffer[i] = self.buffer[i], self._next_in_order()
        return row

    # ---- resume -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor, "row": self.row, "buffer": list(self.buffer),
                "rng": self.rng.bit_generator.state, "rank": self.rank, "world": self.world}

    def start_at_epoch(self, epoch: int) -> None:
        """Begin a fresh pass at `epoch` (a resumed run whose rank has no saved position)."""
        self.epoch, self.cursor, self.row, self.buffer = epoch, 0, 0, []

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["rank"], state["world"]) != (self.rank, self.world):
            # Another data-parallel layout: positions do not carry over; start this rank after
            # the saved epoch so no rank re-reads the epochs already seen.
            self.start_at_epoch(state["epoch"] + 1)
            return
        self.epoch, self.cursor, self.row = state["epoch"], state["cursor"], state["row"]
        self.buffer = list(state["buffer"])
        self.rng.bit_generator.state = state["rng"]
