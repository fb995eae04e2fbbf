"""Phase 1, Cognate: three diverse TRM x Titans-MAG models pretrained at the same time on Ray.

Driver: load the curriculum once, hold out a common validation set (by document), build the tokenizer,
pack each model's stage corpora, and start one ``CognateTrainer`` actor per model with the share
``cluster.resources`` gives it. Afterwards: measure what makes the three different (weights, halting
steps, memory, speed) and compare their validation perplexity with a unigram model of the same text.
"""
from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

import ray
import torch

from cluster.resources import plan_devices, plan_trainers, share_for
from forge.artifacts import atomic_dir, atomic_write_json, load_model_dir
from forge.config import CognateModelSpec, PipelineConfig
from forge.criteria import criterion, missed
from forge.pretrain.stages import STAGES, StageMixConfig, build_stage
from forge.data.heldout import HELDOUT_TEXTS, REPLAY_TEXTS
from forge.data.lm_dataset import blocks_from_stream, is_validation_text, token_stream, unigram_perplexity
from forge.data.sources import SourceConfig, load_texts
from forge.data.tokenizer import load_gpt2_tokenizer, train_bpe_tokenizer
from forge.phases.base import PhaseContext, PhaseResult
from forge.pretrain.trainer import Stage, TrainJob, trainer_memory_bytes

log = logging.getLogger(__name__)

VALIDATION_SEED = 1729  # fixed, so the held-out documents do not move when the run's seed changes
HALTING_SPREAD_REQUIRED = 2.0  # spec: halting_diversity > 2.0 (steps)
SPEED_SPREAD_MS_REQUIRED = 10.0  # spec: speed_diversity > 10.0 (ms)


def _source_config(config: PipelineConfig) -> SourceConfig:
    return SourceConfig(order=tuple(config.data.sources), data_dir=config.data.data_dir,
                        max_items=config.cognate.data.items_per_dataset, allow_skip=config.data.allow_skip,
                        seed=config.seed)


def _stage_mix(config: PipelineConfig, spec: CognateModelSpec) -> StageMixConfig:
    return StageMixConfig(category_weights=spec.category_weights, chars_per_stage=config.cognate.data.chars_per_stage,
                            seed=spec.seed, sources=_source_config(config))


def _tokenizer(ctx: PhaseContext, train_texts: list[str]):
    """The run's tokenizer, built once and kept in work/ so a resumed phase reuses it."""
    from transformers import AutoTokenizer

    data_cfg = ctx.config.cognate.data
    path = ctx.work_dir / "tokenizer"
    if not path.is_dir():
        tokenizer = (load_gpt2_tokenizer() if data_cfg.tokenizer == "gpt2"
                     else train_bpe_tokenizer(train_texts, data_cfg.bpe_vocab_size, seed=ctx.config.seed))
        with atomic_dir(path) as tmp:
            tokenizer.save_pretrained(tmp)
    return AutoTokenizer.from_pretrained(path), path


def _encode(tokenizer, texts: list[str]) -> list[int]:
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return token_stream(ids, tokenizer.eos_token_id)


def _architecture(config: PipelineConfig, spec: CognateModelSpec, tokenizer) -> dict[str, Any]:
    arch = dict(config.cognate.architecture)
    arch.update(act_threshold=spec.act_threshold, ltm_slots=spec.ltm_slots, vocab_size=len(tokenizer),
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id)
    return arch


@torch.no_grad()
def measure_models(models: dict[str, Any], blocks: torch.Tensor, repeats: int = 5) -> dict[str, dict[str, float]]:
    """Halting steps and forward latency of each model on the same validation batch.

    Latency is the minimum over ``repeats`` rounds that time the models in turn, on one thread: timing them
    one after another lets a burst of load on a shared machine land on a single model.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        figures = {}
        for name, model in models.items():
            model.eval()
            out = model(input_ids=blocks)
            figures[name] = {"halting_steps": float(out.halting_steps), "forward_ms": float("inf"),
                             "ltm_slots": model.config.ltm_slots, "act_threshold": model.config.act_threshold}
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(input_ids=blocks)
                figures[name]["forward_ms"] = min(figures[name]["forward_ms"],
                                                  (time.perf_counter() - start) * 1000)
    finally:
        torch.set_num_threads(threads)
    return figures


def diversity_report(models: dict[str, Any], blocks: torch.Tensor, threshold: float) -> dict[str, Any]:
    """What makes the models different, measured; ``warning`` is set when weight diversity is low."""
    from forge.merge import weight_space_diversity

    per_model = measure_models(models, blocks)
    weight = weight_space_diversity([m.state_dict() for m in models.values()])
    halting = [m["halting_steps"] for m in per_model.values()]
    speed = [m["forward_ms"] for m in per_model.values()]
    report = {
        "per_model": per_model,
        "weight_space_diversity": weight,
        "halting_steps_spread": max(halting) - min(halting),
        "forward_ms_spread": max(speed) - min(speed),
        "threshold": threshold,
        "below_threshold": weight < threshold,
    }
    if weight < threshold:
        report["warning"] = (f"weight-space diversity {weight:.3f} is below {threshold}: the models may merge "
                             "into little more than one of them; use more different seeds, data mixes or epochs")
        log.warning(report["warning"])
    return report


def diversity_criteria(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The spec's Phase 1 diversity criteria, recorded as measured (the spec asserts them). Weight-space
    diversity stands for ``validate_diversity`` (>= 0.3); halting and speed spreads are the spec's
    ``halting_diversity > 2.0`` and ``speed_diversity > 10`` ms."""
    return {"weight_space_diversity": criterion(report["weight_space_diversity"], ">=", report["threshold"]),
            "halting_diversity": criterion(report["halting_steps_spread"], ">", HALTING_SPREAD_REQUIRED),
            "speed_diversity_ms": criterion(report["forward_ms_spread"], ">", SPEED_SPREAD_MS_REQUIRED)}


def run(ctx: PhaseContext) -> PhaseResult:
    config = ctx.config
    cognate = config.cognate
    seq_len = cognate.train.seq_len

    # 1. Data: each dataset loaded once; every model mixes its own stages from it.
    sources = _source_config(config)
    loaded = {name: load_texts(name, sources) for names in STAGES.values() for name in names}
    mixes = {spec.name: [build_stage(stage, _stage_mix(config, spec), loaded) for stage in STAGES]
             for spec in cognate.models}
    all_texts = {text for stages in mixes.values() for mix in stages for text in mix.texts}
    fraction = cognate.data.validation_fraction
    val_texts = sorted(t for t in all_texts if is_validation_text(t, fraction, VALIDATION_SEED))
    train_texts = sorted(all_texts.difference(val_texts))
    if not val_texts:
        raise ValueError("no validation documents: raise cognate.data.validation_fraction or give more data")

    atomic_write_json(ctx.phase_dir / HELDOUT_TEXTS, {"seed": VALIDATION_SEED, "fraction": fraction,
                                                      "texts": val_texts})
    replay, replay_chars = [], 0
    for text in random.Random(config.seed).sample(train_texts, len(train_texts)):
        if replay_chars >= cognate.data.replay_chars:
            break
        replay.append(text)
        replay_chars += len(text)
    atomic_write_json(ctx.phase_dir / REPLAY_TEXTS, {"seed": config.seed, "texts": replay})
    tokenizer, tokenizer_dir = _tokenizer(ctx, train_texts)
    val_stream = _encode(tokenizer, val_texts)
    val_blocks = blocks_from_stream(val_stream, seq_len)
    if len(val_blocks) == 0:
        raise ValueError(f"the validation text ({len(val_stream)} tokens) is shorter than one sequence of "
                         f"{seq_len}: raise cognate.data.chars_per_stage or validation_fraction")

    # 2. One training job per model.
    plan = plan_devices(config.device)
    jobs, data_record = [], {}
    for spec in cognate.models:
        stages, unigram_train = [], []
        for mix, epochs in zip(mixes[spec.name], spec.stage_epochs):
            texts = [t for t in mix.texts if not is_validation_text(t, fraction, VALIDATION_SEED)]
            stream = _encode(tokenizer, texts)
            unigram_train.extend(stream)
            stages.append(Stage(mix.stage, blocks_from_stream(stream, seq_len), epochs))
        data_record[spec.name] = {
            "stages": [m.summary() for m in mixes[spec.name]],
            "train_blocks": [len(s.blocks) for s in stages],
            "unigram_val_perplexity": unigram_perplexity(unigram_train, val_stream, len(tokenizer)),
        }
        arch = _architecture(config, spec, tokenizer)
        jobs.append(TrainJob(
            name=spec.name, architecture=arch, seed=spec.seed, train=cognate.train, stages=stages,
            val_blocks=val_blocks, tokenizer_dir=tokenizer_dir, out_dir=ctx.phase_dir / f"model_{spec.name}",
            checkpoint_dir=ctx.work_dir / spec.name, metrics_dir=ctx.phase_dir, tracking=config.tracking,
            group=ctx.run_dir.name, device="cpu", share=len(cognate.models)))

    # 3. Train the models at the same time, each on the share the cluster layer gives it.
    from actors.cognate_trainer import CognateTrainer
    from actors.restarts import ATTEMPTS_FILE, lost_error, restart_options

    # One share size for all: planned on the largest memory (the models differ only in slots and thresholds).
    largest = max(jobs, key=lambda job: job.architecture["ltm_slots"])
    train_cfg = cognate.train

    def need(micro: int) -> int:
        return trainer_memory_bytes(largest.architecture, micro, seq_len, plan.device)

    if train_cfg.micro_batch_size:
        share, concurrent = share_for(plan, need(train_cfg.micro_batch_size), len(jobs)), len(jobs)
    else:
        share, _, concurrent = plan_trainers(plan, need, len(jobs), train_cfg.batch_size)
    for job in jobs:
        job.device, job.threads = share.device, share.torch_threads
        job.free_memory_bytes = share.gpu_memory_bytes  # GPU: the share caps the trainer; CPU: None (its own share)
    log.info("cognate: %d trainers (%d at a time), each %s", len(jobs), concurrent, share)
    # A trainer whose process dies is restarted and resumes from its step checkpoint (ray.max_restarts).
    max_restarts = config.ray.max_restarts
    pending = {}
    for job in jobs:
        attempts = Path(job.checkpoint_dir) / ATTEMPTS_FILE
        trainer = CognateTrainer.options(**share.ray_options(), **restart_options(max_restarts)).remote(str(attempts))
        pending[trainer.train.remote(job)] = (job.name, trainer, attempts)
    results: dict[str, dict[str, Any]] = {}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            name, trainer, attempts = pending.pop(done[0])
            try:
                results[name] = ray.get(done[0])
            except ray.exceptions.RayActorError as err:
                raise lost_error(f"cognate trainer '{name}'", attempts, max_restarts, err) from err
            ray.kill(trainer)  # free its share at once: on a small node a waiting trainer needs it
            print(f"[forge] cognate: model {name} done: val perplexity {results[name]['val/perplexity']:.2f} "
                  f"(unigram {data_record[name]['unigram_val_perplexity']:.2f})", flush=True)
    finally:
        for _, trainer, _ in pending.values():
            ray.kill(trainer)

    # 4. Measure the three side by side, from the saved directories.
    outputs = {job.name: job.out_dir for job in jobs}
    models = {name: load_model_dir(path)[0] for name, path in outputs.items()}
    diversity = diversity_report(models, val_blocks[: min(4, len(val_blocks))], cognate.diversity_threshold)
    per_model = {}
    for name, result in results.items():
        unigram = data_record[name]["unigram_val_perplexity"]
        per_model[name] = {
            **{k: v for k, v in result.items() if k != "history"},
            "unigram_val_perplexity": unigram,
            "perplexity_vs_unigram": result["val/perplexity"] / unigram,
            "epochs": result["history"],
            "data": data_record[name],
        }
    sources_used = {name: texts.summary() for name, texts in loaded.items()}
    criteria = diversity_criteria(diversity)
    summary = {
        "models": per_model,
        "diversity": diversity,
        "criteria": criteria,
        "criteria_missed": missed(criteria),
        "datasets": sources_used,
        "skipped_datasets": sorted(name for name, texts in loaded.items() if texts.skipped),
        "validation": {"documents": len(val_texts), "tokens": len(val_stream), "blocks": len(val_blocks),
                       "texts_file": HELDOUT_TEXTS},
        "tokenizer": {"kind": cognate.data.tokenizer, "vocab_size": len(tokenizer)},
        "resources": {"device": share.device, "num_gpus": share.num_gpus, "num_cpus": share.num_cpus},
    }
    return PhaseResult(outputs={name: Path(p) for name, p in outputs.items()}, summary=summary)
