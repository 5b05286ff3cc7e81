"""A W&B offline run file (``run-<id>.wandb``) read without W&B's service: its history, run and artifacts, for
the tests and the lifecycle fuzzer, or to look into an offline run before ``wandb sync``.

wandb 0.31 ships no Python reader of its own files (its service, wandb-core, reads them for ``wandb sync``), so
this reads the format it writes: a ``:W&B`` header, then LevelDB's log framing (32 KiB blocks of records, each
a 7-byte header: checksum, little-endian length, type FULL/FIRST/MIDDLE/LAST) around W&B's own protobuf
``Record`` messages, parsed with the classes wandb ships (wandb.proto.wandb_internal_pb2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from wandb.proto.wandb_internal_pb2 import Record

HEADER = 7  # ":W&B", a 2-byte magic number, a version byte
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[Record]:
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file (no :W&B header)")
    position, pieces = HEADER, b""
    while position + 7 <= len(data):
        if BLOCK - position % BLOCK < 7:  # a block's tail too short for a record header is padding
            position += BLOCK - position % BLOCK
            continue
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        payload = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 0:  # zeros after the last record
            break
        pieces += payload
        if kind in (FULL, LAST):
            yield Record.FromString(pieces)
            pieces = b""


def history(path: Path) -> list[dict[str, Any]]:
    """Each ``run.log`` call of the file: its keys and values."""
    return [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        for record in records(path)
        if record.WhichOneof("record_type") == "history"
    ]


def run_info(path: Path) -> dict[str, Any]:
    """The run's id, project and group, and its config, as the file holds them."""
    (run,) = [record.run for record in records(path) if record.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    return {"id": run.run_id, "project": run.project, "group": run.run_group, "config": config}
