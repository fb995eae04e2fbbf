"""Phase 1's declared text outputs, written next to its models, hashed in its manifest and handed to later phases
by the pipeline (``PhaseContext.texts``): the held-out documents (every later measurement) and a sample of the
training documents (replayed by later fine-tuning)."""
from __future__ import annotations

import math
from pathlib import Path

from forge.artifacts import read_json

HELDOUT = "heldout"
"""Phase 1's declared text output: the validation documents no model trained on (later phases' perplexity)."""
REPLAY = "replay"
"""Phase 1's declared text output: a seeded sample of the training documents, replayed by later phases'
fine-tuning so that it keeps the models' text modelling (never the held-out documents)."""
TEXT_FILES = {HELDOUT: "heldout_texts.json", REPLAY: "replay_texts.json"}
"""The file each declared text output is written to, next to Phase 1's models."""


def read_texts(path: Path, max_chars: int) -> list[str]:
    """Up to ``max_chars`` characters of the documents in ``path``, taken evenly across the whole file: it is
    grouped by stage and source, so its first documents alone are not representative (a Phase 1 model's
    perplexity on the first 20k held-out characters was 1.7x that on all)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: later phases read the texts Phase 1 wrote; run the cognate "
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
        raise ValueError(f"{path} holds only {total} characters of text; raise "
                         "cognate.data.validation_fraction (or the reading phase's character limit)")
    return texts
