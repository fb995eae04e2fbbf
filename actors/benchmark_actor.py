"""Ray actor that keeps a model resident and evaluates candidates' weights on benchmarks.

The caller decides resources: ``BenchmarkActor.options(num_cpus=1, num_gpus=0.25).remote(model_dir)``.
New weights arrive in memory (``set_weights`` with a state dict put once in the object store), so a
pool of actors evaluates a whole population without re-creating actors or re-reading files;
``evaluate_on_pool`` yields results as they finish (``ray.wait``), not in submission order;
``evaluate_prompts`` scores Phase 6 prompt proposals on a pool holding one set of weights.

Evaluations name the weights they mean with a ``WeightsRef``: an actor restarted after its process died
(``actors.restarts``; its constructor re-reads the model directory) loads them again before the re-sent
call, so a re-queued evaluation scores the same weights and gives the same result.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import ray
import torch

from actors.restarts import record_attempt


@dataclass(frozen=True)
class WeightsRef:
    """A state dict put once in the object store. Wrapped so Ray passes the reference itself (it resolves only
    top-level arguments): an actor fetches the weights only when it does not hold them yet."""

    ref: ray.ObjectRef
    hash: str | None = None
    """Their ``state_dict_hash`` if the caller knows it (saves the actor computing it)."""


@ray.remote
class BenchmarkActor:
    """A resident model plus the benchmarks harness, on a GPU share or CPU."""

    def __init__(self, model: str | os.PathLike | Mapping[str, Any], *, tokenizer_dir: str | None = None,
                 device: str | None = None, data_dir: str | None = None, cache_dir: str | None = None,
                 gpu_memory_bytes: int | None = None, attempts_file: str | None = None,
                 threads: int | None = None) -> None:
        """``model``: a model directory, or a config dict (with ``model_type``) for fresh weights that
        ``set_weights`` replaces. ``tokenizer_dir``: where the tokenizer is when the model directory has
        none (default for configs: the GPT-2 tokenizer). ``device``: default cuda when Ray gave this
        actor a GPU, else cpu. ``cache_dir``: a result cache shared with other actors. ``gpu_memory_bytes``:
        this actor's share of the GPU, which caps its CUDA allocator. ``attempts_file``: where this actor's
        processes are recorded (``actors.restarts``). ``threads``: torch threads (None: torch's default)."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        import forge.models  # noqa: F401  (registers the Cognate architecture)
        from benchmarks.cache import ResultCache
        from forge.artifacts import MANIFEST, load_model_dir, state_dict_hash
        from forge.data.tokenizer import load_gpt2_tokenizer

        from forge.devices import limit_gpu_memory

        if attempts_file:
            record_attempt(attempts_file)
        if threads is not None:
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if ray.get_gpu_ids() else "cpu"))
        limit_gpu_memory(str(self.device), gpu_memory_bytes)
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
        self.weights_ref: str | None = None  # the WeightsRef loaded last (None: the constructor's weights)
        self.data_dir = data_dir
        self.cache = ResultCache(Path(cache_dir)) if cache_dir else ResultCache()

    def set_weights(self, state_dict: Mapping[str, torch.Tensor], weights_hash: str | None = None) -> str:
        """Load new weights in place (all keys must match); returns their hash (the cache key part).

        Pass the ObjectRef of a state dict put once with ``ray.put``; Ray hands the dict itself here."""
        self.model.load_state_dict(state_dict, strict=True)
        self.weights_hash = weights_hash or self._hash(self.model.state_dict())
        self.weights_ref = None
        return self.weights_hash

    def evaluate(self, tasks: Sequence[str], *, weights: WeightsRef | None = None, weights_hash: str | None = None,
                 **kwargs: Any) -> dict:
        """``benchmarks.evaluate`` on the resident model; returns ``{task: TaskResult}``.

        ``weights``: load these first unless already held. ``weights_hash``: the weights the caller means (e.g.
        the ObjectRef of a ``set_weights`` call, which also makes this call wait for it and fail if it failed);
        a mismatch raises."""
        from benchmarks.harness import evaluate

        self._hold(weights)
        self._check_weights(weights_hash)
        kwargs.setdefault("data_dir", self.data_dir)
        kwargs.setdefault("cache", self.cache)
        return evaluate(self.model, self.tokenizer, list(tasks), weights_hash=self.weights_hash, **kwargs)

    def evaluate_tool_use(self, prompt: str, problems: Sequence, *, weights: WeightsRef | None = None,
                          weights_hash: str | None = None, **kwargs: Any) -> dict:
        """``benchmarks.tooluse.evaluate_tool_use`` of ``prompt`` on ``problems`` (``ToolProblem``s) with
        the resident model; returns ``ToolUseResult.to_dict()``. ``weights``, ``weights_hash`` as in ``evaluate``."""
        from benchmarks.tooluse import evaluate_tool_use

        self._hold(weights)
        self._check_weights(weights_hash)
        kwargs.setdefault("data_dir", self.data_dir)
        kwargs.setdefault("cache", self.cache)
        return evaluate_tool_use(self.model, self.tokenizer, prompt=prompt, problems=list(problems),
                                 weights_hash=self.weights_hash, **kwargs).to_dict()

    def _hold(self, weights: WeightsRef | None) -> None:
        if weights is not None and weights.ref.hex() != self.weights_ref:
            self.set_weights(ray.get(weights.ref), weights.hash)
            self.weights_ref = weights.ref.hex()

    def scoreboard(self, settings, *, model_dir: str, heldout_texts: Sequence[str],
                   wikitext_texts: Sequence[str]) -> dict:
        """``benchmarks.scoreboard.score_model`` of the resident model (loaded from ``model_dir``)."""
        from benchmarks.scoreboard import score_model

        return score_model(self.model, self.tokenizer, Path(model_dir), settings, heldout_texts=heldout_texts,
                           wikitext_texts=wikitext_texts, data_dir=self.data_dir)

    def _check_weights(self, weights_hash: str | None) -> None:
        if weights_hash is not None and weights_hash != self.weights_hash:
            raise RuntimeError(f"actor holds weights {self.weights_hash[:12]}, caller expected {weights_hash[:12]}")

    def info(self) -> dict[str, Any]:
        """Where this actor runs and what it holds."""
        return {"pid": os.getpid(), "device": str(self.device), "weights_hash": self.weights_hash,
                "cache_hits": self.cache.hits, "cache_misses": self.cache.misses,
                "torch_threads": torch.get_num_threads()}


def evaluate_on_pool(actors: Sequence, candidates: Sequence, tasks: Sequence[str],
                        **kwargs: Any) -> Iterator[tuple[int, dict]]:
    """Evaluate every candidate (a state dict or its ObjectRef) on a pool of ``BenchmarkActor``s.

    Yields ``(candidate index, {task: TaskResult})`` in the order evaluations finish; each actor takes
    the next candidate as soon as it is free. State dicts not yet in the object store are put once.
    """
    if not actors:
        raise ValueError("evaluate_on_pool needs at least one BenchmarkActor")
    refs = [c if isinstance(c, ray.ObjectRef) else ray.put(c) for c in candidates]
    pending: dict[ray.ObjectRef, tuple[int, Any]] = {}
    next_candidate = 0

    def submit(actor) -> None:
        nonlocal next_candidate
        index = next_candidate
        next_candidate += 1
        pending[actor.evaluate.remote(list(tasks), weights=WeightsRef(refs[index]), **kwargs)] = (index, actor)

    for actor in actors[:len(refs)]:
        submit(actor)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        index, actor = pending.pop(done[0])
        result = ray.get(done[0])
        if next_candidate < len(refs):
            submit(actor)
        yield index, result


PROMPT_METHODS = ("evaluate", "evaluate_tool_use")  # BenchmarkActor methods evaluate_prompts can run


def evaluate_prompts(actors: Sequence, prompts: Sequence[str], *, method: str, **kwargs: Any) -> list[dict]:
    """Evaluate every prompt on a pool of ``BenchmarkActor``s that hold the same weights; results in
    prompt order.

    method "evaluate": harness tasks (``tasks=`` in kwargs; each result is ``{task: TaskResult}``);
    "evaluate_tool_use": the tool-use benchmark (``problems=`` in kwargs; each result is
    ``ToolUseResult.to_dict()``). Other kwargs go to that method. The first prompts go to actors in
    order, then each actor takes the next prompt as soon as it is free (``ray.wait``). A prompt given
    twice is evaluated once. The caller loads the weights on every actor first (``set_weights``).
    """
    if method not in PROMPT_METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(PROMPT_METHODS)}")
    required = "tasks" if method == "evaluate" else "problems"
    if required not in kwargs:
        raise ValueError(f"evaluate_prompts(method={method!r}) needs {required}=...")
    if not actors:
        raise ValueError("evaluate_prompts needs at least one BenchmarkActor")
    # The method's main input: the task names, or the problems put once in the object store.
    inputs = list(kwargs.pop("tasks")) if method == "evaluate" else ray.put(list(kwargs.pop("problems")))
    results: dict[str, dict] = {}
    pending: dict[ray.ObjectRef, tuple[str, Any]] = {}

    def submit(actor, prompt: str) -> None:
        if method == "evaluate":
            ref = actor.evaluate.remote(inputs, prompt=prompt, **kwargs)
        else:
            ref = actor.evaluate_tool_use.remote(prompt, inputs, **kwargs)
        pending[ref] = (prompt, actor)

    queue = iter(dict.fromkeys(prompts))
    for actor, prompt in zip(actors, queue):  # actors first: zip stops before taking a prompt it cannot place
        submit(actor, prompt)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        prompt, actor = pending.pop(done[0])
        results[prompt] = ray.get(done[0])
        following = next(queue, None)
        if following is not None:
            submit(actor, following)
    return [results[prompt] for prompt in prompts]


def score_model_dirs(model_dirs: Mapping[str, Path], settings, *, heldout_texts: Sequence[str],
                     wikitext_texts: Sequence[str], data_dir: str | None, device: str) -> dict[str, dict]:
    """Scoreboard rows of several model directories, each on its own ``BenchmarkActor`` (started here on the
    resource share ``cluster.resources`` gives it, killed when its row is in); ``{name: score_model result}``."""
    from cluster.resources import plan_devices, share_for

    if not model_dirs:
        return {}
    weight_bytes = max(sum(p.stat().st_size for p in Path(d).iterdir() if p.suffix == ".safetensors")
                       for d in model_dirs.values())
    share = share_for(plan_devices(device), 3 * weight_bytes + 256 * 1024**2, len(model_dirs))
    texts = ray.put(list(heldout_texts))
    wikitext = ray.put(list(wikitext_texts))
    pending: dict[ray.ObjectRef, tuple[str, Any]] = {}
    # One thread on CPU: the scoreboard's models are small and its passes short; a second thread on a loaded
    # machine made one row 22x more CPU time (a merged model scored alone: 80 s, its parents side by side: 3.6 s).
    threads = 1 if share.device == "cpu" else None
    for name, path in model_dirs.items():
        actor = BenchmarkActor.options(**share.ray_options()).remote(str(path), device=share.device,
                                                                      data_dir=data_dir, threads=threads)
        pending[actor.scoreboard.remote(settings, model_dir=str(path), heldout_texts=texts,
                                        wikitext_texts=wikitext)] = (name, actor)
    rows: dict[str, dict] = {}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            name, actor = pending.pop(done[0])
            rows[name] = ray.get(done[0])
            ray.kill(actor)
    finally:
        for _, actor in pending.values():
            ray.kill(actor)
    return rows
