"""Read an offline W&B run file (``<save_dir>/wandb/offline-run-*/run-<id>.wandb``) without the network.

The file is a LevelDB-style log: a 7-byte file header (``:W&B``, magic 0xBEE1, version), then 32 KiB blocks of
records, each ``crc32c (4) | length (2, LE) | type (1)`` + payload; type 1 = a whole record, 2/3/4 = first,
middle, last fragment; a block tail shorter than a header is zero padding. Each reassembled payload is a
``wandb.proto.wandb_internal_pb2.Record``. Checksums are not verified (this is a reader for tests and demos).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def payloads(path: str | Path) -> Iterator[bytes]:
    """Yield every reassembled record payload of a .wandb file."""
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{str(path)!r} is not a W&B run file (bad header {data[:4]!r}).")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # zero padding at a block's end
            pos += room
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        if kind == 0 and length == 0:  # preallocated / padding
            pos += room
            continue
        body = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            yield body
        elif kind == FIRST:
            pending = body
        elif kind == MIDDLE:
            pending += body
        elif kind == LAST:
            yield pending + body
            pending = b""
        else:
            raise ValueError(f"corrupt W&B run file {str(path)!r}: record type {kind} at byte {pos}.")


def records(path: str | Path) -> Iterator[Any]:
    """Yield ``wandb_internal_pb2.Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    for body in payloads(path):
        record = pb.Record()
        record.ParseFromString(body)
        yield record


def history(path: str | Path) -> list[dict[str, Any]]:
    """The run's history rows as dicts (``key`` -> JSON-decoded value), in logging order."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json) if item.value_json else None
        rows.append(row)
    return rows


def find_run_file(save_dir: str | Path) -> Path:
    """The newest ``run-*.wandb`` under ``save_dir`` (searched recursively)."""
    files = sorted(Path(save_dir).glob("**/run-*.wandb"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no W&B run file (run-*.wandb) under {str(save_dir)!r}.")
    return files[-1]
