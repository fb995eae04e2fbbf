"""Result cache keyed by (model weights hash, task, prompt, evaluation config).

Evaluating an identical candidate twice (same weights, tokenizer, items, prompt and settings) returns
the stored result without running the model. Entries live in memory and, when a directory is given,
as one JSON file per key written atomically (several processes may share the directory).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forge.artifacts import atomic_write_json, read_json


def cache_key(weights_hash: str, task: str, prompt: str | None, config: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of everything that determines a task result."""
    payload = json.dumps({"weights": weights_hash, "task": task, "prompt": prompt, "config": config},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class ResultCache:
    """Task results by key; ``directory`` (optional) persists them across processes."""

    directory: Path | None = None  # where entries are stored as <key>.json; None: memory only
    hits: int = 0  # lookups answered from the cache
    misses: int = 0  # lookups that had to evaluate
    _memory: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.directory is not None:
            self.directory = Path(self.directory)
            self.directory.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored result dict for ``key``, or None."""
        entry = self._memory.get(key)
        if entry is None and self.directory is not None:
            path = self.directory / f"{key}.json"
            if path.is_file():
                entry = read_json(path)
                self._memory[key] = entry
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def put(self, key: str, result: dict[str, Any]) -> None:
        self._memory[key] = result
        if self.directory is not None:
            atomic_write_json(self.directory / f"{key}.json", result)

    def __len__(self) -> int:
        return len(self._memory)
