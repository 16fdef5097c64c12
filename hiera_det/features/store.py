"""Features on disk: sharded safetensors, an index from input (and clip) to row, resumable.

Layout of an output folder::

    run.json                 what produced the features (model, weights, stages, preprocessing, clips)
    shard-00000.safetensors  one tensor per output, rows stacked: {"stage4": [N, C, h, w], "pooled": ...}
    shard-00000.json         the index rows of that shard, in row order
    index.json               all shards' rows: [{"file", "shard", "row", ("clip", "start_time", ...)}]
    failures.json            the inputs of the last run that could not be read, with the reasons

A shard is written to a temporary name and renamed, then its row list likewise; a shard counts only once
both exist. A crash therefore loses at most the rows not yet in a shard, and a second run skips every
(file, clip) already written.
"""

from __future__ import annotations

import json
import os
import re
from typing import Iterable

import torch

_SHARD = re.compile(r"^shard-(\d{5})\.json$")


def write_json_atomic(path: str, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def entry_key(entry: dict) -> tuple[str, int | None]:
    return entry["file"], entry.get("clip")


class RunMismatchError(ValueError):
    """The output folder holds features of a different run."""


class FeatureStore:
    """Appends rows of features to an output folder in shards of ``shard_rows`` rows."""

    def __init__(self, root: str, run_config: dict, shard_rows: int = 256):
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
        self.root = root
        self.shard_rows = shard_rows
        os.makedirs(root, exist_ok=True)
        self._check_run(run_config)
        self.entries: list[dict] = []
        self.shards: list[str] = []
        self._load_written()
        self._done = {entry_key(e) for e in self.entries}
        self._pending_entries: list[dict] = []
        self._pending_tensors: list[dict[str, torch.Tensor]] = []

    def _check_run(self, run_config: dict) -> None:
        path = os.path.join(self.root, "run.json")
        run_config = json.loads(json.dumps(run_config))  # as it reads back: tuples become lists
        if os.path.isfile(path):
            with open(path) as f:
                previous = json.load(f)
            changed = sorted(k for k in set(previous) | set(run_config) if previous.get(k) != run_config.get(k))
            if changed:
                details = "; ".join(f"{k}: {previous.get(k)!r} -> {run_config.get(k)!r}" for k in changed)
                raise RunMismatchError(
                    f"{self.root} holds features of another run ({details}); resume with the same settings, "
                    f"or write to a new --output folder"
                )
        else:
            write_json_atomic(path, run_config)

    def _load_written(self) -> None:
        names = sorted(os.listdir(self.root))
        for name in names:
            if name.endswith(".tmp"):  # an interrupted write
                os.remove(os.path.join(self.root, name))
        numbers = []
        for name in sorted(os.listdir(self.root)):
            match = _SHARD.match(name)
            if match is None:
                continue
            tensors = os.path.join(self.root, name[: -len(".json")] + ".safetensors")
            if not os.path.isfile(tensors):
                continue
            with open(os.path.join(self.root, name)) as f:
                self.entries.extend(json.load(f))
            self.shards.append(os.path.basename(tensors))
            numbers.append(int(match.group(1)))
        for name in os.listdir(self.root):
            # a shard renamed into place whose row list was not: its rows are not indexed, so they are redone
            if name.startswith("shard-") and name.endswith(".safetensors") and name not in self.shards:
                os.remove(os.path.join(self.root, name))
        self._next = max(numbers, default=-1) + 1

    def is_done(self, file: str, clip: int | None = None) -> bool:
        return (file, clip) in self._done

    def add(self, entry: dict, tensors: dict[str, torch.Tensor]) -> None:
        """Queue one row; a full shard is written at once."""
        self._pending_entries.append(entry)
        self._pending_tensors.append({k: v.detach().cpu() for k, v in tensors.items()})
        if len(self._pending_entries) >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        """Write the queued rows as one shard (nothing when none are queued)."""
        if not self._pending_entries:
            return
        from safetensors.torch import save_file

        stem = f"shard-{self._next:05d}"
        keys = self._pending_tensors[0].keys()
        stacked = {k: torch.stack([t[k] for t in self._pending_tensors]).contiguous() for k in keys}
        tensor_path = os.path.join(self.root, stem + ".safetensors")
        save_file(stacked, tensor_path + ".tmp")
        os.replace(tensor_path + ".tmp", tensor_path)
        rows = [dict(e, shard=stem + ".safetensors", row=i) for i, e in enumerate(self._pending_entries)]
        write_json_atomic(os.path.join(self.root, stem + ".json"), rows)
        self.entries.extend(rows)
        self.shards.append(stem + ".safetensors")
        self._done.update(entry_key(e) for e in rows)
        self._next += 1
        self._pending_entries, self._pending_tensors = [], []
        self.write_index()

    def write_index(self) -> None:
        write_json_atomic(os.path.join(self.root, "index.json"), {"shards": self.shards, "entries": self.entries})

    def write_failures(self, failures: Iterable) -> None:
        write_json_atomic(os.path.join(self.root, "failures.json"), [f.to_json() for f in failures])


def load_rows(root: str, key: str, entries: list[dict]) -> torch.Tensor:
    """Tensor ``key`` of the given index entries, stacked in their order (reads only the shards needed)."""
    from safetensors import safe_open

    by_shard: dict[str, list[int]] = {}
    for e in entries:
        by_shard.setdefault(e["shard"], []).append(e["row"])
    loaded = {}
    for shard, rows in by_shard.items():
        with safe_open(os.path.join(root, shard), framework="pt") as f:
            loaded[shard] = f.get_tensor(key)
    return torch.stack([loaded[e["shard"]][e["row"]] for e in entries])
