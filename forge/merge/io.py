"""Merging Hugging Face model directories (Cognate and ordinary ``transformers`` models alike)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forge.artifacts import MANIFEST, ArtifactError, model_dir_problems, save_model_dir
from forge.merge.methods import MergeError, merge

# Config fields that say nothing about the weights and may differ between mergeable models.
_IRRELEVANT_CONFIG_FIELDS = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures"}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


@dataclass
class LoadedModel:
    """A model directory loaded for merging."""

    path: Path  # the directory it came from
    model: Any  # the transformers PreTrainedModel, in eval mode on CPU
    tokenizer: Any | None  # its tokenizer, None when the directory has no tokenizer files


def load_model(path: Path | str) -> LoadedModel:
    """Load a model directory; one with a manifest must match it (unfinished or altered ones are refused)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import forge.models  # noqa: F401  (registers the Cognate architecture with the Auto classes)

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model directory (no config.json); pass a Hugging Face model "
                                "directory written by save_pretrained or by a forge phase")
    if (path / MANIFEST).exists():
        problems = model_dir_problems(path)
        if problems:
            raise ArtifactError(f"{path} is not a usable model directory: {'; '.join(problems)}. "
                                "Re-run the phase that wrote it.")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    has_tokenizer = any((path / name).is_file() for name in _TOKENIZER_FILES)
    tokenizer = AutoTokenizer.from_pretrained(path) if has_tokenizer else None
    return LoadedModel(path, model, tokenizer)


def config_differences(models: Sequence[LoadedModel]) -> dict[str, list[Any]]:
    """Config fields whose values differ between ``models`` (field -> value per model).

    Raises MergeError when the model types or the tokenizers' vocabularies differ.
    """
    configs = [m.model.config.to_dict() for m in models]
    types = [c.get("model_type") for c in configs]
    if len(set(types)) > 1:
        raise MergeError(f"cannot merge different architectures: model types {types} "
                         f"({', '.join(str(m.path) for m in models)}). Merge models of one architecture.")
    vocabularies = [(m.path, m.tokenizer.get_vocab()) for m in models if m.tokenizer is not None]
    for path, vocab in vocabularies[1:]:
        if vocab != vocabularies[0][1]:
            raise MergeError(f"cannot merge models with different vocabularies: the tokenizer of {path} differs "
                             f"from that of {vocabularies[0][0]}. Merge only models trained with one tokenizer.")
    fields = sorted(set().union(*configs) - _IRRELEVANT_CONFIG_FIELDS)
    return {f: [c.get(f) for c in configs] for f in fields if any(c.get(f) != configs[0].get(f) for c in configs)}


def merge_model_dirs(method: str, model_dirs: Sequence[Path | str], out_dir: Path | str, *,
                     base_dir: Path | str | None = None, seed: int = 0,
                     params: Mapping[str, Any] | None = None) -> Path:
    """Merge model directories with ``method`` and write the result as a model directory (atomically).

    The output takes the config and tokenizer of the first model; config fields that differ between the
    inputs without changing weight shapes are recorded in the manifest under ``merge.config_differences``.
    """
    params = dict(params or {})
    models = [load_model(d) for d in model_dirs]
    base = load_model(base_dir) if base_dir is not None else None
    differences = config_differences(models + ([base] if base is not None else []))
    merged = merge(method, [m.model.state_dict() for m in models],
                   base=base.model.state_dict() if base is not None else None, seed=seed, **params)
    template = models[0].model
    template.load_state_dict(merged, strict=True)
    tokenizer = next((m.tokenizer for m in models if m.tokenizer is not None), None)
    record = {
        "method": method,
        "params": params,
        "seed": seed,
        "models": [str(m.path) for m in models],
        "base": str(base.path) if base is not None else None,
        "config_differences": differences,
    }
    return save_model_dir(template, tokenizer, Path(out_dir), phase="merge", extra={"merge": record})
