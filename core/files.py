"""Atomic file writes: a reader sees the old file or the new one, whole, never half of one.

    with atomic_path(path) as tmp:        # any writer that takes a path (Parquet, safetensors, tar)
        write_something(tmp)
    write_text_atomic(path, text)         # the common case

The temporary file sits next to the target (a rename within one directory is atomic) and ends
in `.tmp`, so the cleaners of interrupted runs (data_prep.prep) recognise and delete it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False, unique: bool = False) -> Iterator[Path]:
    """Yield a temporary path; when the block ends without an error, rename it over `path`
    (after an fsync when asked: data that must survive a power cut, like shards), else delete it.
    `unique`: a hidden per-writer name, for targets that several processes may write at once."""
    path = Path(path)
    tmp = (path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp") if unique
           else path.with_name(path.name + ".tmp"))
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str, fsync: bool = False, unique: bool = False) -> None:
    """Write UTF-8 `text` to `path` through atomic_path."""
    with atomic_path(path, fsync=fsync, unique=unique) as tmp:
        tmp.write_text(text, encoding="utf-8")
