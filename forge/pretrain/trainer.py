"""The pretraining loop used by Phase 1: plain PyTorch, resumable, with divergence rollback.

Data arrives as packed token blocks (``LongTensor[n, seq_len]``) per curriculum stage. Every
``checkpoint_every`` optimizer steps and at the end of each epoch the full state (model, optimizer,
RNG, position in the curriculum) is written atomically, so a killed process resumes where it was.
A NaN/inf loss or a spike above ``spike_factor`` x the recent mean rolls back to the last checkpoint
and lowers the learning rate by ``lr_backoff``. The checkpoint before the last is kept: resuming from an
unreadable or non-finite checkpoint falls back to it (or to step 0), with a message.
"""
from __future__ import annotations

import io
import logging
import math
import os
import pickle
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from forge.artifacts import atomic_write_bytes, nonfinite_tensors
from forge.pretrain.config import CognateTrainConfig
from forge.optim import build_muon_grokfast
from forge.tracking import Tracker

CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
"""The checkpoint before the last, kept as the fallback of an unusable one."""

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Training kept diverging after the allowed number of rollbacks."""


@dataclass
class Stage:
    name: str
    blocks: torch.Tensor
    """Packed training sequences, ``LongTensor[n, seq_len]``."""
    epochs: int


@dataclass
class Position:
    stage: int = 0
    epoch: int = 0
    batch: int = 0
    """Optimizer steps already taken in the current epoch."""
    step: int = 0
    """Optimizer steps taken in total."""
    tokens: int = 0
    lr_scale: float = 1.0
    rollbacks: int = 0
    recent_losses: list[float] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    """Validation results at the end of each epoch."""


@dataclass(frozen=True)
class Precision:
    """How a training step computes: autocast dtype (None: plain float32) and whether losses are scaled."""

    device_type: str
    autocast_dtype: torch.dtype | None

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """fp16 gradients underflow without loss scaling; disabled (a pass-through) for every other precision."""
        return torch.amp.GradScaler(self.device_type, enabled=self.autocast_dtype == torch.float16)


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """The ``cognate.train.precision`` setting on ``device``; switches on TF32 matmuls on Ampere+ GPUs."""
    device = torch.device(device)
    native_bf16 = False
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        native_bf16 = major >= 8  # Turing (7.5) emulates bf16 slowly: it gets fp16
        if native_bf16:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
    if precision == "auto":
        precision = ("bf16" if native_bf16 else "fp16") if device.type == "cuda" else "float32"
    if precision == "float32":
        return Precision(device.type, None)
    if precision == "bf16":
        if device.type == "cuda" and not native_bf16:
            raise ValueError(f"precision bf16: {torch.cuda.get_device_name(device)} has no native bf16; use fp16 or auto")
        return Precision(device.type, torch.bfloat16)
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError(f"precision fp16 needs a CUDA device, got {device}: use auto, float32 or bf16")
        return Precision(device.type, torch.float16)
    raise ValueError(f"unknown precision {precision!r}; valid: auto, float32, bf16, fp16")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def steps_in_epoch(stage: Stage, cfg: CognateTrainConfig) -> int:
    steps = max(1, len(stage.blocks) // cfg.batch_size)
    return min(steps, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else steps


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def next_token_metrics(logits: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and count of correct top-1 predictions of the next token."""
    shift_logits = logits[:, :-1].reshape(-1, logits.size(-1)).float()
    targets = input_ids[:, 1:].reshape(-1)
    loss = F.cross_entropy(shift_logits, targets, reduction="sum")
    correct = (shift_logits.argmax(-1) == targets).sum()
    return loss, correct


@torch.no_grad()
def evaluate_lm(model, blocks: torch.Tensor, micro_batch: int, device: torch.device,
                max_batches: int | None = None) -> dict[str, float]:
    """Validation next-token loss, perplexity and accuracy, computed from the model's logits."""
    was_training = model.training
    model.eval()
    total_loss, total_correct, total_tokens, halting = 0.0, 0, 0, []
    for i, start in enumerate(range(0, len(blocks), micro_batch)):
        if max_batches and i >= max_batches:
            break
        batch = blocks[start:start + micro_batch].to(device)
        out = model(input_ids=batch)
        loss, correct = next_token_metrics(out.logits, batch)
        total_loss += loss.item()
        total_correct += int(correct)
        total_tokens += batch[:, 1:].numel()
        if getattr(out, "halting_steps", None) is not None:
            halting.append(float(out.halting_steps))
    model.train(was_training)
    if total_tokens == 0:
        raise ValueError("the validation set is empty: lower cognate.data.validation_fraction's divisor or "
                         "give more data")
    mean = total_loss / total_tokens
    result = {"val/loss": mean, "val/perplexity": math.exp(min(mean, 50.0)),
              "val/accuracy": total_correct / total_tokens}
    if halting:
        result["val/halting_steps"] = sum(halting) / len(halting)
    return result


def _save_checkpoint(path: Path, model, optimizer, pos: Position, scaler: torch.amp.GradScaler) -> None:
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "position": pos.__dict__,
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
        "grad_scaler": scaler.state_dict(),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue(), previous=path.with_name(PREVIOUS_CHECKPOINT))


def _load_checkpoint(path: Path, model, optimizer, scaler: torch.amp.GradScaler) -> Position:
    return _apply_checkpoint(torch.load(path, map_location="cpu", weights_only=False), model, optimizer, scaler)


def checkpoint_problem(state: dict[str, Any]) -> str | None:
    """Why a loaded checkpoint cannot be resumed from (missing parts, non-finite weights or optimizer
    state), or None."""
    missing = {"model", "optimizer", "position", "rng"} - set(state)
    if missing:
        return f"it lacks {sorted(missing)}"
    bad = nonfinite_tensors(state["model"])
    if bad:
        return f"non-finite weights in {bad[0]}"
    for slot in state["optimizer"].get("state", {}).values():
        bad = nonfinite_tensors(slot)
        if bad:
            return f"non-finite optimizer state ({bad[0]})"
    return None


def resume_checkpoint(checkpoint: Path, model, optimizer, scaler: torch.amp.GradScaler, name: str) -> Position | None:
    """Load the newest usable checkpoint (``checkpoint``, else the one before it) into ``model``, ``optimizer``
    and the gradient ``scaler``; returns its position, or None when neither exists or is usable (start at step 0)."""
    candidates = [p for p in (checkpoint, checkpoint.with_name(PREVIOUS_CHECKPOINT)) if p.is_file()]
    for index, path in enumerate(candidates):
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            problem = checkpoint_problem(state) if isinstance(state, dict) else "it is not a checkpoint"
        except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as err:  # truncated, garbled
            problem = f"it is unreadable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        if problem is None:
            return _apply_checkpoint(state, model, optimizer, scaler)
        fallback = (f"falling back to {candidates[index + 1].name}" if index + 1 < len(candidates)
                    else "no usable checkpoint is left: training restarts from step 0")
        log.warning("[%s] cannot resume from %s: %s; %s", name, path, problem, fallback)
    return None


def _apply_checkpoint(state: dict[str, Any], model, optimizer, scaler: torch.amp.GradScaler) -> Position:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if state.get("grad_scaler"):  # empty when the scaler is disabled
        scaler.load_state_dict(state["grad_scaler"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    return Position(**state["position"])


def _set_lr(optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group["lr"] = group["initial_lr"] * factor


def _diverged(loss: float, recent: list[float], cfg: CognateTrainConfig) -> bool:
    if not math.isfinite(loss):
        return True
    if len(recent) < 10:
        return False
    return loss > cfg.spike_factor * (sum(recent) / len(recent))


def train(model, stages: list[Stage], val_blocks: torch.Tensor, cfg: CognateTrainConfig, *,
          checkpoint_dir: Path, tracker: Tracker, device: torch.device, seed: int,
          micro_batch: int) -> dict[str, Any]:
    """Train ``model`` through ``stages``; returns measured figures. Resumes from ``checkpoint_dir``."""
    if cfg.batch_size % micro_batch:
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of the micro-batch {micro_batch}")
    accumulation = cfg.batch_size // micro_batch
    for stage in stages:
        if stage.epochs and len(stage.blocks) < micro_batch:
            raise ValueError(f"curriculum stage {stage.name!r} has {len(stage.blocks)} sequences, fewer than one "
                             f"micro-batch ({micro_batch}): give it more text or fewer epochs")
    checkpoint = Path(checkpoint_dir) / CHECKPOINT
    model.to(device).train()
    optimizer = build_muon_grokfast(model, cfg.optimizer)
    total_steps = sum(steps_in_epoch(s, cfg) * s.epochs for s in stages)
    precision = resolve_precision(cfg.precision, device)
    scaler = precision.grad_scaler()
    set_seed(seed)
    pos = resume_checkpoint(checkpoint, model, optimizer, scaler, tracker.name)
    if pos is not None:
        tracker.log({"train/resumed_at_step": pos.step}, step=pos.step)
    else:
        pos = Position()
        _save_checkpoint(checkpoint, model, optimizer, pos, scaler)  # a rollback target before the first step
    started, start_tokens = time.time(), pos.tokens

    while pos.stage < len(stages):
        stage = stages[pos.stage]
        if pos.epoch >= stage.epochs:
            pos.stage, pos.epoch, pos.batch = pos.stage + 1, 0, 0
            continue
        n_steps = steps_in_epoch(stage, cfg)
        order = torch.randperm(len(stage.blocks), generator=torch.Generator().manual_seed(
            seed * 1000 + pos.stage * 100 + pos.epoch))
        while pos.batch < n_steps:
            _set_lr(optimizer, lr_factor(pos.step, total_steps, cfg.warmup_steps) * pos.lr_scale)
            optimizer.zero_grad(set_to_none=True)
            step_loss, step_ce = 0.0, 0.0
            for micro in range(accumulation):
                first = (pos.batch * cfg.batch_size + micro * micro_batch) % len(stage.blocks)
                idx = order[first:first + micro_batch]
                batch = stage.blocks[idx].to(device)
                with precision.autocast():
                    # no logits: the loss's CE is taken in blocks of tokens (the logits dominate step memory)
                    out = model(input_ids=batch, labels=batch, return_logits=False)
                scaler.scale(out.loss / accumulation).backward()
                step_loss += out.loss.item() / accumulation
                step_ce += out.ce_loss.item() / accumulation  # mean next-token CE over batch[:, 1:]
            if _diverged(step_loss, pos.recent_losses, cfg):
                pos = _rollback(checkpoint, model, optimizer, scaler, pos, step_loss, cfg, tracker)
                break  # restart the epoch loop from the restored position
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)  # skipped when fp16 gradients overflowed (the scale is lowered instead)
            scaler.update()
            pos.step += 1
            pos.batch += 1
            pos.tokens += cfg.batch_size * stage.blocks.size(1)
            pos.recent_losses = (pos.recent_losses + [step_loss])[-20:]
            elapsed = max(time.time() - started, 1e-9)
            tracker.log({"train/loss": step_loss, "train/perplexity": math.exp(min(step_ce, 50.0)),
                         "train/ce": step_ce, "train/grad_norm": float(grad_norm),
                         "train/lr_scale": pos.lr_scale, "train/stage": pos.stage, "train/epoch": pos.epoch,
                         "train/tokens_per_s": (pos.tokens - start_tokens) / elapsed}, step=pos.step)
            if pos.step % max(1, total_steps // 20) == 0 or pos.step == total_steps:
                # One line per ~5% of training: readable when Ray interleaves several trainers' output.
                print(f"[{tracker.name}] step {pos.step}/{total_steps} stage {stage.name} loss {step_loss:.3f} "
                      f"{(pos.tokens - start_tokens) / elapsed:.0f} tok/s", flush=True)
            if pos.step % cfg.checkpoint_every == 0:
                _save_checkpoint(checkpoint, model, optimizer, pos, scaler)
        else:
            val = evaluate_lm(model, val_blocks, micro_batch, device, cfg.eval_max_batches or None)
            pos.history.append({"stage": stage.name, "epoch": pos.epoch, "step": pos.step, **val})
            tracker.log(val, step=pos.step)
            pos.epoch, pos.batch = pos.epoch + 1, 0
            _save_checkpoint(checkpoint, model, optimizer, pos, scaler)

    final = evaluate_lm(model, val_blocks, micro_batch, device, None)
    elapsed = time.time() - started
    return {"steps": pos.step, "tokens": pos.tokens, "rollbacks": pos.rollbacks,
            "tokens_per_s_this_session": (pos.tokens - start_tokens) / max(elapsed, 1e-9),
            "history": pos.history, **final}


def _rollback(checkpoint: Path, model, optimizer, scaler: torch.amp.GradScaler, pos: Position, loss: float,
              cfg: CognateTrainConfig, tracker: Tracker) -> Position:
    rollbacks = pos.rollbacks + 1
    if rollbacks > cfg.max_rollbacks:
        raise TrainingDiverged(
            f"loss {loss} at step {pos.step} diverged after {cfg.max_rollbacks} rollbacks; lower "
            "cognate.train.optimizer.muon_lr / adam_lr or raise cognate.train.max_rollbacks")
    restored = _load_checkpoint(checkpoint, model, optimizer, scaler)
    restored.rollbacks = rollbacks
    restored.lr_scale = pos.lr_scale * cfg.lr_backoff
    tracker.log({"train/divergence_loss": loss, "train/rollback_to_step": restored.step,
                 "train/lr_scale": restored.lr_scale}, step=pos.step)
    return restored


def torch_threads(n: int) -> None:
    """Limit intra-op threads (several trainers share one machine's cores)."""
    torch.set_num_threads(max(1, n))
    os.environ["OMP_NUM_THREADS"] = str(max(1, n))


@dataclass
class TrainJob:
    """Everything one Cognate model's training needs; picklable, so a Ray actor can run it."""

    name: str
    architecture: dict[str, Any]
    """CognateConfig fields, including this model's act_threshold and ltm_slots."""
    seed: int
    train: CognateTrainConfig
    stages: list[Stage]
    val_blocks: torch.Tensor
    tokenizer_dir: Path
    out_dir: Path
    """Model directory to write (atomically, with a manifest)."""
    checkpoint_dir: Path
    metrics_dir: Path
    tracking: Any
    """forge.tracking.TrackingConfig."""
    group: str
    device: str = "cpu"
    threads: int = 1
    free_memory_bytes: int | None = None
    """Memory this trainer may use (on a GPU: its share, which also caps its CUDA allocator); None: this machine's
    available memory divided by ``share``, or the GPU's free memory."""
    share: int = 1
    init_from: Path | None = None
    """Model directory whose weights this model starts from (the trunk, ``forge.pretrain.trunk``); None: a random init
    from ``seed``. A resumed job continues from its own checkpoint instead."""


OPTIMIZER_FLOATS_PER_PARAM = 3
"""MuonGrokfast's state per parameter: the Grokfast gradient average plus Muon's momentum or Adam's two moments."""


def trainer_memory_bytes(architecture: dict[str, Any], micro_batch: int, seq_len: int, device: str) -> int:
    """Memory a trainer needs at ``micro_batch``: weights, optimizer state, one step's peak (activations, logits,
    gradients; ``forge.models.size.estimate_step_memory_bytes``) and, on CUDA, the context."""
    from forge.devices import CUDA_CONTEXT_BYTES
    from forge.models import CognateConfig
    from forge.models.size import estimate_step_memory_bytes, sum_parameters

    config = CognateConfig(**architecture)
    states = 4 * sum_parameters(config) * (1 + OPTIMIZER_FLOATS_PER_PARAM)
    context = CUDA_CONTEXT_BYTES if device.startswith("cuda") else 0
    return estimate_step_memory_bytes(config, micro_batch, seq_len) + states + context


def pick_micro_batch(job: TrainJob) -> int:
    """The configured micro-batch, or the largest power of two dividing batch_size that fits this trainer's
    memory (its GPU share, or this machine's available memory divided by ``share``)."""
    from forge.devices import largest_micro_batch

    cfg = job.train
    if cfg.micro_batch_size:
        return cfg.micro_batch_size
    free = job.free_memory_bytes
    if free is None:
        if job.device.startswith("cuda"):
            free = torch.cuda.mem_get_info()[0]
        else:
            import psutil

            free = psutil.virtual_memory().available // max(1, job.share)
    return largest_micro_batch(free, lambda micro: trainer_memory_bytes(job.architecture, micro, cfg.seq_len,
                                                                          job.device), cfg.batch_size)


def run_train_job(job: TrainJob) -> dict[str, Any]:
    """Build, train (resuming if a checkpoint exists) and save one Cognate model; returns its figures."""
    from transformers import AutoTokenizer

    from forge.artifacts import save_model_dir
    from forge.models import CognateConfig, CognateForCausalLM
    from forge.models.size import get_model_size

    from forge.devices import limit_gpu_memory

    torch_threads(job.threads)
    set_seed(job.seed)
    device = torch.device(job.device)
    limit_gpu_memory(job.device, job.free_memory_bytes)
    model = CognateForCausalLM(CognateConfig(**job.architecture))
    if job.init_from is not None:
        from forge.pretrain.trunk import fork_from_trunk

        fork_from_trunk(model, job.init_from)
    tokenizer = AutoTokenizer.from_pretrained(job.tokenizer_dir)
    micro = pick_micro_batch(job)
    tracker = Tracker(job.metrics_dir, name=f"cognate-{job.name}", config=job.tracking,
                      run_config={"model": job.name, "architecture": job.architecture, "micro_batch": micro},
                      group=job.group)
    Path(job.checkpoint_dir).mkdir(parents=True, exist_ok=True)
    started = time.time()
    try:
        summary = train(model, job.stages, job.val_blocks, job.train, checkpoint_dir=job.checkpoint_dir,
                        tracker=tracker, device=device, seed=job.seed, micro_batch=micro)
    finally:
        tracker.finish()
    model.to("cpu").eval()
    summary.update(name=job.name, micro_batch=micro, train_wall_time_s=time.time() - started,
                   size=get_model_size(model))
    save_model_dir(model, tokenizer, job.out_dir, phase="cognate",
                   extra={"cognate_model": job.name, "training": {k: v for k, v in summary.items()
                                                                  if k != "history"}})
    return summary
