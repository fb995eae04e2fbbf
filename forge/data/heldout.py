"""Phase 1's held-out documents: the file Phase 1 writes next to its models, read by every later measurement."""
from __future__ import annotations

import math
from pathlib import Path

from forge.artifacts import read_json

HELDOUT_TEXTS = "heldout_texts.json"
"""Written next to the models: the validation documents no model trained on (later phases' perplexity)."""


def read_heldout_texts(cognate_dir: Path, max_chars: int) -> list[str]:
    """Phase 1's held-out documents (no Cognate model trained on them), up to ``max_chars`` characters taken
    evenly across the whole set: the file is grouped by stage and source, so its first documents alone are
    not representative (a Phase 1 model's perplexity on the first 20k characters was 1.7x that on all)."""
    path = Path(cognate_dir) / HELDOUT_TEXTS
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: later phases measure on the texts Phase 1 held out; run the "
                                "cognate phase in this run directory first (python -m forge.pipeline --phases "
                                "cognate,...)")
    documents = read_json(path)["texts"]
    step = max(1, math.floor(sum(map(len, documents)) / max_chars)) if max_chars > 0 else 1
    texts, total = [], 0
    for text in documents[::step]:
        if total >= max_chars:
            break
        texts.append(text[: max_chars - total])
        total += len(texts[-1])
    if total < 100:
        raise ValueError(f"{path} holds only {total} characters of held-out text; raise "
                         "cognate.data.validation_fraction (or the reading phase's character limit)")
    return texts
