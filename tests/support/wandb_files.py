"""Read back the records of a W&B offline run (run-ID.wandb, what `wandb sync` would upload).

The file is W&B's LevelDB-style log: a 7-byte header (":W&B", magic 0xBEE1, version), then
32 KiB blocks of chunks (crc32c, little-endian length, type FULL=1 / FIRST=2 / MIDDLE=3 /
LAST=4), each record a protobuf `Record`. wandb ships no Python reader for it any more."""

from __future__ import annotations

from pathlib import Path

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if left < HEADER or kind == 0:  # the block's zero padding
            pos += left
            continue
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def history(paths: list[Path]) -> dict[str, dict[int, float]]:
    """key -> {step: value} over the run files' history records (numbers only)."""
    import json

    out: dict[str, dict[int, float]] = {}
    for path in paths:
        for record in wandb_records(path):
            if record.WhichOneof("record_type") != "history":
                continue
            items = {".".join(item.nested_key) or item.key: item.value_json for item in record.history.item}
            step = int(json.loads(items.get("_step", "0")))
            for key, value in items.items():
                parsed = json.loads(value)
                if isinstance(parsed, (int, float)) and not key.startswith("_"):
                    out.setdefault(key, {})[step] = parsed
    return out
