"""Read an offline W&B run file (``<save_dir>/wandb/offline-run-*/run-<id>.wandb``) without the network.

The file is a LevelDB-style log: a 7-byte file header (``:W&B``, magic 0xBEE1, version), then 32 KiB blocks of
records, each ``crc32c (4) | length (2, LE) | type (1)`` + payload; type 1 = a whole record, 2/3/4 = first,
middle, last fragment; a block tail shorter than a header is zero padding. Each reassembled payload is a
``wandb.proto.wandb_internal_pb2.Record``. Checksums are not verified (this is a reader for tests and demos).

W&B's writer (a separate service process) buffers the file in blocks and may still be writing it after
``run.finish()`` returns; :func:`history` therefore reads a run only once it is complete: its ``exit`` record
(the last record of a finished run) is present and the file size has stopped changing.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2 as pb

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
        if pos + HEADER + length > len(data):  # a record still being written
            return
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
    record_type = pb.Record  # type: ignore[attr-defined]  # generated protobuf code carries no type stubs
    for body in payloads(path):
        record = record_type()
        record.ParseFromString(body)
        yield record


def is_complete(path: str | Path) -> bool:
    """Whether the run file holds its ``exit`` record (written when the run finished)."""
    try:
        return any(record.WhichOneof("record_type") == "exit" for record in records(path))
    except (DecodeError, ValueError):  # read while a block was being written: not complete yet
        return False


def wait_until_complete(path: str | Path, timeout: float = 60.0, poll: float = 0.2) -> Path:
    """Block until the run file is complete: its exit record is present and its size is the same at two
    polls ``poll`` seconds apart. Raises TimeoutError (naming the file) after ``timeout`` seconds."""
    file = Path(path)
    deadline = time.monotonic() + timeout
    size = -1
    while True:
        current = file.stat().st_size
        if current == size and is_complete(file):
            return file
        if time.monotonic() > deadline:
            raise TimeoutError(f"W&B run file {str(file)!r} is still incomplete after {timeout:.0f} s "
                               "(no exit record, or still growing); was the run finished?")
        size = current
        time.sleep(poll)


def history(path: str | Path, wait: float | None = 60.0) -> list[dict[str, Any]]:
    """The run's history rows as dicts (``key`` -> JSON-decoded value), in logging order.

    Waits (up to ``wait`` seconds) for the run file to be complete; ``wait=None`` reads it as it is now.
    """
    if wait is not None:
        wait_until_complete(path, timeout=wait)
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
