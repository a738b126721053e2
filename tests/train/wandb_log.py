"""Reads a W&B offline run file (`run-ID.wandb`) without W&B's service.

wandb 0.31 writes an offline run's history and config only into this file (no wandb-summary.json
or config.yaml), and no longer ships a Python reader, so the tests read it themselves: a LevelDB
log (7-byte file header ":W&B" + magic 0xBEE1 + version; then 32 KiB blocks of records, each with a
7-byte header crc32 / length / kind, kind 1 = whole, 2/3/4 = first/middle/last piece) whose payloads
are W&B's own protobuf `Record` messages.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = 7


def payloads(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B run file"
    pos, pieces = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:  # zero padding up to the block's end
            pos += left
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pieces = chunk
        elif kind == 3:
            pieces += chunk
        elif kind == 4:
            yield pieces + chunk


def history_and_config(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The logged rows ({key: value}) and the config updates of one offline run file."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    for payload in payloads(path):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            rows.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
        elif kind in ("config", "run"):
            items = record.config.update if kind == "config" else record.run.config.update
            for item in items:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return rows, config
