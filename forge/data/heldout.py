"""Phase 1's text files, written next to its models and read by later phases: the held-out documents (every later
measurement) and a sample of the training documents (replayed by later fine-tuning)."""
from __future__ import annotations

import math
from pathlib import Path

from forge.artifacts import read_json

HELDOUT_TEXTS = "heldout_texts.json"
"""Written next to the models: the validation documents no model trained on (later phases' perplexity)."""
REPLAY_TEXTS = "replay_texts.json"
"""Written next to the models: a seeded sample of the training documents, replayed by later phases' fine-tuning
so that it keeps the models' text modelling (never the held-out documents)."""


def _read_texts(path: Path, max_chars: int, what: str) -> list[str]:
    """Up to ``max_chars`` characters of the documents in ``path``, taken evenly across the whole file: it is
    grouped by stage and source, so its first documents alone are not representative (a Phase 1 model's
    perplexity on the first 20k held-out characters was 1.7x that on all)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: later phases read the {what} Phase 1 wrote; run the cognate "
                                "phase in this run directory first (python -m forge.pipeline --phases cognate,...)")
    documents = read_json(path)["texts"]
    step = max(1, math.floor(sum(map(len, documents)) / max_chars)) if max_chars > 0 else 1
    texts, total = [], 0
    for text in documents[::step]:
        if total >= max_chars:
            break
        texts.append(text[: max_chars - total])
        total += len(texts[-1])
    if total < 100:
        raise ValueError(f"{path} holds only {total} characters of {what}; raise "
                         "cognate.data.validation_fraction (or the reading phase's character limit)")
    return texts


def read_heldout_texts(cognate_dir: Path, max_chars: int) -> list[str]:
    """Phase 1's held-out documents (no Cognate model trained on them), up to ``max_chars`` characters."""
    return _read_texts(Path(cognate_dir) / HELDOUT_TEXTS, max_chars, "held-out text")


def read_replay_texts(cognate_dir: Path, max_chars: int) -> list[str]:
    """Phase 1's training documents sampled for replay, up to ``max_chars`` characters."""
    return _read_texts(Path(cognate_dir) / REPLAY_TEXTS, max_chars, "replay text")
