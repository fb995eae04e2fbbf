"""Ray actor that keeps a model resident and evaluates candidates' weights on benchmarks.

The caller decides resources: ``BenchmarkActor.options(num_cpus=1, num_gpus=0.25).remote(model_dir)``.
New weights arrive in memory (``set_weights`` with a state dict put once in the object store), so a
pool of actors evaluates a whole population without re-creating actors or re-reading files;
``evaluate_candidates`` yields results as they finish (``ray.wait``), not in submission order.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import ray
import torch


@ray.remote
class BenchmarkActor:
    """A resident model plus the benchmarks harness, on a GPU share or CPU."""

    def __init__(self, model: str | os.PathLike | Mapping[str, Any], *, tokenizer_dir: str | None = None,
                 device: str | None = None, data_dir: str | None = None, cache_dir: str | None = None) -> None:
        """``model``: a model directory, or a config dict (with ``model_type``) for fresh weights that
        ``set_weights`` replaces. ``tokenizer_dir``: where the tokenizer is when the model directory has
        none (default for configs: the GPT-2 tokenizer). ``device``: default cuda when Ray gave this
        actor a GPU, else cpu. ``cache_dir``: a result cache shared with other actors."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        import forge.models  # noqa: F401  (registers the Cognate architecture)
        from benchmarks.cache import ResultCache
        from forge.artifacts import MANIFEST, load_model_dir, state_dict_hash
        from forge.data.tokenizer import load_gpt2_tokenizer

        self.device = torch.device(device or ("cuda" if ray.get_gpu_ids() else "cpu"))
        if isinstance(model, Mapping):
            config = dict(model)
            if "model_type" not in config:
                raise ValueError("a model config for BenchmarkActor needs 'model_type' (e.g. 'gpt2', 'cognate')")
            config_obj = AutoConfig.for_model(config.pop("model_type"), **config)
            self.model = AutoModelForCausalLM.from_config(config_obj).to(self.device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir) if tokenizer_dir else load_gpt2_tokenizer()
        else:
            path = Path(model)
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"{path} is not a model directory (no config.json)")
            self.model, self.tokenizer = load_model_dir(path, device=self.device,
                                                        verify=(path / MANIFEST).is_file())
            if tokenizer_dir:
                self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self._hash = state_dict_hash
        self.weights_hash = state_dict_hash(self.model.state_dict())
        self.data_dir = data_dir
        self.cache = ResultCache(Path(cache_dir)) if cache_dir else ResultCache()

    def set_weights(self, state_dict: Mapping[str, torch.Tensor], weights_hash: str | None = None) -> str:
        """Load new weights in place (all keys must match); returns their hash (the cache key part).

        Pass the ObjectRef of a state dict put once with ``ray.put``; Ray hands the dict itself here."""
        self.model.load_state_dict(state_dict, strict=True)
        self.weights_hash = weights_hash or self._hash(self.model.state_dict())
        return self.weights_hash

    def evaluate(self, tasks: Sequence[str], *, weights_hash: str | None = None, **kwargs: Any) -> dict:
        """``benchmarks.evaluate`` on the resident model; returns ``{task: TaskResult}``.

        ``weights_hash``: the weights the caller means (e.g. the ObjectRef of a ``set_weights`` call,
        which also makes this call wait for it and fail if it failed); a mismatch raises."""
        from benchmarks.harness import evaluate

        if weights_hash is not None and weights_hash != self.weights_hash:
            raise RuntimeError(f"actor holds weights {self.weights_hash[:12]}, caller expected {weights_hash[:12]}")
        kwargs.setdefault("data_dir", self.data_dir)
        kwargs.setdefault("cache", self.cache)
        return evaluate(self.model, self.tokenizer, list(tasks), weights_hash=self.weights_hash, **kwargs)

    def info(self) -> dict[str, Any]:
        """Where this actor runs and what it holds."""
        return {"pid": os.getpid(), "device": str(self.device), "weights_hash": self.weights_hash,
                "cache_hits": self.cache.hits, "cache_misses": self.cache.misses,
                "torch_threads": torch.get_num_threads()}


def evaluate_candidates(actors: Sequence, candidates: Sequence, tasks: Sequence[str],
                        **kwargs: Any) -> Iterator[tuple[int, dict]]:
    """Evaluate every candidate (a state dict or its ObjectRef) on a pool of ``BenchmarkActor``s.

    Yields ``(candidate index, {task: TaskResult})`` in the order evaluations finish; each actor takes
    the next candidate as soon as it is free. State dicts not yet in the object store are put once.
    """
    if not actors:
        raise ValueError("evaluate_candidates needs at least one BenchmarkActor")
    refs = [c if isinstance(c, ray.ObjectRef) else ray.put(c) for c in candidates]
    pending: dict[ray.ObjectRef, tuple[int, Any]] = {}
    next_candidate = 0

    def submit(actor) -> None:
        nonlocal next_candidate
        index = next_candidate
        next_candidate += 1
        # The evaluation depends on the set_weights result: it waits for it and fails if it failed.
        loaded = actor.set_weights.remote(refs[index])
        pending[actor.evaluate.remote(list(tasks), weights_hash=loaded, **kwargs)] = (index, actor)

    for actor in actors[:len(refs)]:
        submit(actor)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        index, actor = pending.pop(done[0])
        result = ray.get(done[0])
        if next_candidate < len(refs):
            submit(actor)
        yield index, result
