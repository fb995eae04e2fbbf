"""Bake a prompt into a LoRA adapter: minimise KL(P_base(. | prompt, x) || P_baked(. | x)).

The student is the base model wrapped by peft with a LoRA adapter; the teacher is, by default, the
same network with the adapter disabled (``with model.disable_adapter():``), so no second copy of the
weights is held. peft freezes every base weight and only the LoRA weights reach the optimizer; the
base weights are hashed before wrapping and again after training, and the bake fails if they moved.
A separate frozen ``teacher`` module can be given instead (stacking bakes towards a fixed target).

Two modes (``BakingConfig.mode``). ``epochs`` stops after ``num_epochs`` of the schedule. ``target_strength``
trains until the strength on a calibration split (inputs neither trained on nor measured on) reaches
``target_strength``, then multiplies the LoRA update by the factor, found by bisection on that split, at
which it equals the target; the strength reported is measured afterwards on the held-out split.

Sequences to retain (e.g. a task's questions with their answers) add, with ``retention_weight``, the KL
from the unbaked model to the student on their answer tokens: what the model did there before the bake
is what it must still do after it. With ``retention_target`` "reference" the student is held to the answer tokens
themselves (cross-entropy) instead, which keeps the answers without pinning every other probability.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

from forge.artifacts import (
    ArtifactError,
    atomic_dir,
    model_dir_problems,
    read_manifest,
    save_model_dir,
    state_dict_hash,
    write_manifest,
)
from forge.baking.config import BakingConfig
from forge.baking.kl import ModelView, batch_kl_sum, check_head, fixed, kl_backward, plain, reference_ce_backward
from forge.baking.trajectories import Trajectory, collate, sample_trajectories, split_inputs
from forge.data.batching import length_groups
from forge.modelinfo import pad_token_id

log = logging.getLogger(__name__)

ADAPTER_DIR_KIND = "agent-forge/lora-adapter"
PHASE = "baking"
SCALE_SEARCH_STEPS = 16  # bisection steps on the LoRA scale (2^-16 of the update at most between tries)
SCALE_SEARCH_TOLERANCE = 0.002  # the search stops once the calibration strength is this close to the target
COARSE_SCALES = (0.75, 0.5, 0.25, 0.0)  # tried when the trained update falls short of the target


class BakingError(RuntimeError):
    """A bake cannot be run or its result cannot be trusted."""


class NothingToBake(BakingError):
    """The prompt does not change the reference model's predictions: there is no behaviour to bake."""

    def __init__(self, kl: float):
        super().__init__(f"the prompt does not change the reference model's predictions on the held-out inputs "
                         f"(KL = {kl:.3g}); there is nothing to bake")
        self.kl = kl


def find_lora_targets(model: nn.Module) -> list[str]:
    """Names (last path component) of every linear layer to adapt: ``nn.Linear`` and GPT-2's ``Conv1D``.

    The LM head and anything sharing the input embedding's weight are left out: the adapter changes
    how the network computes, not the vocabulary projection the KL is taken through.
    """
    head = model.get_output_embeddings()
    embedding = model.get_input_embeddings()
    skip = {id(head)} | ({id(embedding.weight)} if embedding is not None else set())
    names = set()
    for full_name, module in model.named_modules():
        if module is head or not isinstance(module, (nn.Linear, Conv1D)):
            continue
        if id(module.weight) in skip:
            continue
        names.add(full_name.rsplit(".", 1)[-1])
    if not names:
        raise BakingError(f"{type(model).__name__} has no nn.Linear/Conv1D layers for LoRA; set target_modules")
    return sorted(names)


def base_weights_hash(model: nn.Module) -> str:
    """Hash of the base weights of a plain or LoRA-wrapped model, under the plain model's names."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    state = {
        name.replace(".base_layer.", "."): tensor
        for name, tensor in base.state_dict().items()
        if "lora_" not in name
    }
    return state_dict_hash(state)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


@dataclass
class EpochReport:
    """Held-out measurement after a (possibly partial) epoch."""

    epoch: float  # epochs completed (1.5 = half-way through the second)
    step: int  # optimizer steps so far
    train_kl: float  # mean token KL of the training batches since the last report
    heldout_kl: float  # mean token KL(prompted teacher || baked) on held-out trajectories
    strength: float  # 1 - heldout_kl / kl_reference
    calibration_strength: float | None = None  # target mode: share of the calibration KL gap closed so far
    retain_loss: float | None = None  # mean token loss of the retention batches since the last report: KL(unbaked
    # || student), or with retention_target "reference" the cross-entropy of their tokens (None: nothing retained)


@dataclass
class TrajectorySet:
    """Training and held-out trajectories sampled from the prompted teacher."""

    train: list[Trajectory]
    heldout: list[Trajectory]
    calibration: list[Trajectory] = field(default_factory=list)  # target mode: the LoRA scale is chosen here


@dataclass
class BakeResult:
    """The baked student (base + LoRA adapter) and what was measured."""

    model: PeftModel  # the student; merge() turns it into a plain model
    prompt: str  # the prompt baked in
    config: BakingConfig  # the configuration used
    target_modules: list[str]  # module names that received LoRA
    base_hash: str  # base weights before the bake (state_dict_hash)
    teacher_unchanged: bool  # the teacher's weights hash the same after training as before
    kl_reference: float  # held-out KL(prompted teacher || reference, i.e. the unbaked model)
    kl_before: float  # held-out KL(prompted teacher || student) before training
    kl_after: float  # held-out KL(prompted teacher || student) after training
    strength: float  # 1 - kl_after / kl_reference
    history: list[EpochReport]  # one row per (partial) epoch
    trajectories: TrajectorySet  # what was trained and measured on
    wall_time_s: float  # sampling + training + measuring
    peak_rss_mb: float  # process peak resident memory at the end of the bake
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the tokens counted
    lora_scale: float = 1.0  # factor applied to the trained LoRA update (target mode: found by bisection)
    scale_search: list[dict[str, float]] = field(default_factory=list)  # target mode: each scale tried and
    # the calibration strength it gave

    @property
    def gap_closed(self) -> float:
        """Share of the held-out KL this bake removed: ``1 - kl_after / kl_before`` (the target mode's measure;
        equal to ``strength`` unless a separate reference is given, as in stacking)."""
        return 1.0 - self.kl_after / self.kl_before

    @property
    def target_reached(self) -> bool | None:
        """Target mode: the held-out ``gap_closed`` is within ``strength_tolerance`` of the target."""
        if self.config.mode != "target_strength":
            return None
        return within_tolerance(self.gap_closed, self.config.target_strength, self.config.strength_tolerance)

    @property
    def calibration_strength(self) -> float | None:
        """Target mode: the calibration strength at the applied LoRA scale, what the scale was chosen by (the
        held-out ``strength`` can differ from it by what a few inputs tell apart)."""
        tried = [row for row in self.scale_search if row["scale"] == self.lora_scale]
        return tried[-1]["calibration_strength"] if tried else None

    def describe_strength(self) -> str:
        """The measured strength for a console line; in target mode with the verdict against the target band
        and what the LoRA scale was chosen by, e.g. ``strength 0.465 (target 0.5 +/- 0.1: reached; ...)``."""
        text = f"strength {self.strength:.3f}"
        if self.target_reached is None:
            return text
        calibration = ("" if self.calibration_strength is None
                       else f"calibration {self.calibration_strength:.3f} at ")
        return (f"{text} (target {self.config.target_strength:g} +/- {self.config.strength_tolerance:g}: "
                f"{'reached' if self.target_reached else 'missed'}; {calibration}LoRA scale {self.lora_scale:.3f})")

    def report(self) -> dict[str, Any]:
        """JSON-ready summary (no weights, no trajectories)."""
        return {
            "prompt": self.prompt,
            "config": dataclasses.asdict(self.config),
            "target_modules": self.target_modules,
            "base_model_sha256": self.base_hash,
            "teacher_unchanged": self.teacher_unchanged,
            "kl_reference": self.kl_reference,
            "kl_before": self.kl_before,
            "kl_after": self.kl_after,
            "kl_reduction": 1.0 - self.kl_after / self.kl_before,
            "strength": self.strength,
            "gap_closed": self.gap_closed,
            "target_reached": self.target_reached,
            "lora_scale": self.lora_scale,
            "scale_search": self.scale_search,
            "calibration_strength": self.calibration_strength,
            "history": [dataclasses.asdict(row) for row in self.history],
            "train_trajectories": len(self.trajectories.train),
            "heldout_trajectories": len(self.trajectories.heldout),
            "wall_time_s": self.wall_time_s,
            "peak_rss_mb": self.peak_rss_mb,
            **self.extra,
        }

    def merge(self) -> nn.Module:
        """Fold the adapter into the base weights (``merge_and_unload``); ``self.model`` is used up."""
        return self.model.merge_and_unload()


def within_tolerance(measured: float, target: float, tolerance: float) -> bool:
    """``|measured - target| <= tolerance`` (a bake or a stack row that is further off is reported as missed)."""
    return abs(measured - target) <= tolerance


def mean_kl(teacher: ModelView, student: ModelView, trajectories: Sequence[Trajectory], tokenizer,
            config: BakingConfig) -> float:
    """Mean token KL(teacher with prompt || student without it) over the generated tokens."""
    device = next(student[0].parameters()).device
    total, tokens = 0.0, 0
    for start in range(0, len(trajectories), config.batch_size):
        batch = collate(trajectories[start:start + config.batch_size], pad_token_id(tokenizer), device)
        total += batch_kl_sum(teacher, student, batch, config.kl_chunk_tokens)
        tokens += batch.num_tokens
    return total / tokens


def sample_trajectory_set(teacher: ModelView, tokenizer, prompt: str, inputs: Sequence[str] | None,
                          config: BakingConfig, heldout_inputs: Sequence[str] | None = None) -> TrajectorySet:
    """Split the inputs (unless held-out ones are given) and sample from the prompted teacher.

    In target mode a further ``calibration_fraction`` of the inputs is split off the training side.
    """
    if inputs is None:
        inputs = [""] * config.unconditional_inputs
    if heldout_inputs is None:
        train_inputs, heldout_inputs = split_inputs(inputs, config.heldout_fraction, config.seed)
    else:
        train_inputs = list(inputs)
    calibration_inputs: list[str] = []
    if config.mode == "target_strength":
        if len(train_inputs) < 2:
            raise ValueError(f"target-strength baking needs at least 3 inputs (training, calibration, held-out); "
                             f"got {len(train_inputs)} besides the held-out ones: pass more inputs or use mode=epochs")
        share = config.calibration_fraction * len(inputs) / len(train_inputs)
        train_inputs, calibration_inputs = split_inputs(train_inputs, min(share, 0.5), config.seed + 1)
    if not train_inputs or not heldout_inputs:
        raise ValueError("need at least one training input and one held-out input")
    generator = torch.Generator().manual_seed(config.seed)
    model = teacher.model
    with teacher.context():
        train = sample_trajectories(model, tokenizer, prompt, train_inputs, config, generator)
        heldout = sample_trajectories(model, tokenizer, prompt, heldout_inputs, config, generator)
        calibration = sample_trajectories(model, tokenizer, prompt, calibration_inputs, config, generator)
    return TrajectorySet(train=train, heldout=heldout, calibration=calibration)


def _lr_factor(step: int, total: int, config: BakingConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / (config.warmup_steps + 1)
    if config.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - config.warmup_steps) / max(1, total - config.warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def bake_prompt(model: nn.Module, tokenizer, prompt: str, inputs: Sequence[str] | None,
                config: BakingConfig, *, teacher: nn.Module | None = None,
                reference: nn.Module | None = None, heldout_inputs: Sequence[str] | None = None,
                trajectories: TrajectorySet | None = None, retain: Sequence[Trajectory] = ()) -> BakeResult:
    """Bake ``prompt`` into a LoRA adapter on ``model`` (wrapped in place by peft) and measure it.

    inputs: texts the prompt is followed by (None: trajectories from the prompt alone).
    teacher: a separate model to imitate with the prompt (frozen in place); default ``model`` with the
        adapter off.
    reference: the unbaked model the strength is measured against; default ``model`` with the adapter off.
    heldout_inputs / trajectories: fix the held-out set or the sampled trajectories (stacking reuses them;
        a joint bake pools several prompts' trajectories, each teacher context holding its own prompt).
    retain: sequences (context, continuation) on which the student is held to the unbaked model, with
        ``config.retention_weight``.
    """
    if not prompt or not prompt.strip():
        raise ValueError("the prompt to bake is empty")
    if isinstance(model, PeftModel):
        raise ValueError("model already carries a peft adapter; merge it first (BakeResult.merge())")
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    base_hash = base_weights_hash(model)
    targets = list(config.target_modules) if config.target_modules else find_lora_targets(model)
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,  # the student runs in eval mode
        target_modules=targets, bias="none",
        fan_in_fan_out=any(isinstance(m, Conv1D) for n, m in model.named_modules()
                           if n.rsplit(".", 1)[-1] in targets),
    )
    student = get_peft_model(model, lora)
    student.eval()  # dropout off on both sides: the KL target is exact

    # The adapter-off model and a given teacher or reference stay fixed for the whole bake (hash-checked
    # below), so their hidden states are kept per trajectory rather than recomputed every epoch.
    adapter_off = fixed(ModelView(student, student.disable_adapter))
    teacher_view = adapter_off if teacher is None else fixed(plain(_frozen(teacher)))
    reference_view = adapter_off if reference is None else fixed(plain(_frozen(reference)))
    teacher_hash = base_hash if teacher is None else base_weights_hash(teacher)

    if trajectories is None:
        trajectories = sample_trajectory_set(teacher_view, tokenizer, prompt, inputs, config, heldout_inputs)
    probe = collate(trajectories.heldout[:1], pad_token_id(tokenizer), next(student.parameters()).device)
    check_head(plain(student), probe.student_ids)

    kl_before = mean_kl(teacher_view, plain(student), trajectories.heldout, tokenizer, config)
    # With the default reference the untrained student is the reference (LoRA B starts at zero).
    kl_reference = kl_before if reference is None else mean_kl(
        teacher_view, reference_view, trajectories.heldout, tokenizer, config)
    if kl_reference <= 1e-9:
        student.unload()  # the model leaves as it came, without adapter layers (B is still zero)
        raise NothingToBake(kl_reference)
    kl_calibration = None
    if config.mode == "target_strength":
        if not trajectories.calibration:
            student.unload()
            raise ValueError("target-strength baking needs calibration trajectories; sample the trajectory set "
                             "with a target-mode config (sample_trajectory_set) or use mode=epochs")
        kl_calibration = mean_kl(teacher_view, plain(student), trajectories.calibration, tokenizer, config)
        if kl_calibration <= 1e-9:
            student.unload()
            raise NothingToBake(kl_calibration)

    history = _train(student, teacher_view, trajectories, tokenizer, config, kl_reference, kl_calibration,
                     retain, adapter_off)
    kl_after = history[-1].heldout_kl
    scale, search = 1.0, []
    if kl_calibration is not None:
        scale, search = _scale_to_target(student, teacher_view, trajectories.calibration, tokenizer, config,
                                         kl_calibration)
        kl_after = mean_kl(teacher_view, plain(student), trajectories.heldout, tokenizer, config)
        log.info("bake LoRA scale %.4f: held-out strength %.3f (target %.3f)", scale,
                 1.0 - kl_after / kl_before, config.target_strength)

    teacher_after = base_weights_hash(student if teacher is None else teacher)
    if teacher_after != teacher_hash:
        raise BakingError("the teacher's weights changed during the bake; the result is not a valid bake")
    return BakeResult(
        model=student, prompt=prompt, config=config, target_modules=targets, base_hash=base_hash,
        teacher_unchanged=True, kl_reference=kl_reference, kl_before=kl_before, kl_after=kl_after,
        strength=1.0 - kl_after / kl_reference, history=history, trajectories=trajectories,
        wall_time_s=time.perf_counter() - started, peak_rss_mb=peak_rss_mb(),
        extra={"train_tokens": sum(len(t.generated) for t in trajectories.train),
               "heldout_tokens": sum(len(t.generated) for t in trajectories.heldout),
               "calibration_tokens": sum(len(t.generated) for t in trajectories.calibration),
               "retained_sequences": len(retain)},
        lora_scale=scale, scale_search=search,
    )


def _retain_backward(unbaked: ModelView, student: PeftModel, kept: Sequence[Trajectory], tokenizer,
                     config: BakingConfig) -> float:
    """``retention_weight`` x the mean token KL(unbaked || student) of the retained rows (or their tokens'
    cross-entropy, ``retention_target`` "reference"), back-propagated; a batch of long and short rows runs as two
    padded parts weighted by their tokens (``forge.data.batching``)."""
    device = next(student.parameters()).device
    lengths = [max(len(t.teacher_context), len(t.student_context)) + len(t.generated) for t in kept]
    total = 0.0
    for part, share in length_groups(lengths, [len(t.generated) for t in kept]):
        batch = collate([kept[r] for r in part], pad_token_id(tokenizer), device)
        weight = config.retention_weight * share
        total += share * (reference_ce_backward(student, batch, config.kl_chunk_tokens, weight)
                          if config.retention_target == "reference"
                          else kl_backward(unbaked, student, batch, config.kl_chunk_tokens, weight))
    return total


def _frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def _calibration_strength(student: PeftModel, teacher: ModelView, calibration: Sequence[Trajectory], tokenizer,
                          config: BakingConfig, kl_calibration: float) -> float:
    return 1.0 - mean_kl(teacher, plain(student), calibration, tokenizer, config) / kl_calibration


@torch.no_grad()
def _scale_to_target(student: PeftModel, teacher: ModelView, calibration: Sequence[Trajectory], tokenizer,
                     config: BakingConfig, kl_calibration: float) -> tuple[float, list[dict[str, float]]]:
    """Multiply the LoRA update (every ``lora_B``) by the factor in [0, 1] whose calibration strength is
    closest to the target; return it and every try.

    At scale 0 the strength is 0; when the trained scale's is above the target, bisection closes in on a
    crossing by continuity (no monotonicity is assumed). When it is not, a coarse scan of [0, 1] keeps the
    best factor, so an update that made the model worse on the calibration inputs is not applied (scale 0).
    """
    target = config.target_strength
    trained = {name: param.detach().clone() for name, param in student.named_parameters() if "lora_B" in name}
    params = dict(student.named_parameters())

    def apply(scale: float) -> None:
        for name, weight in trained.items():
            params[name].copy_(weight * scale)

    def measure(scale: float) -> float:
        apply(scale)
        strength = _calibration_strength(student, teacher, calibration, tokenizer, config, kl_calibration)
        tries.append({"scale": scale, "calibration_strength": strength})
        return strength

    tries: list[dict[str, float]] = []
    if measure(1.0) > target:
        low, high = 0.0, 1.0
        for _ in range(SCALE_SEARCH_STEPS):
            middle = (low + high) / 2
            strength = measure(middle)
            if abs(strength - target) <= SCALE_SEARCH_TOLERANCE:
                break
            low, high = (middle, high) if strength < target else (low, middle)
    else:
        for scale in COARSE_SCALES:
            measure(scale)
    best = min(tries, key=lambda row: abs(row["calibration_strength"] - target))
    if best is not tries[-1]:
        apply(best["scale"])
    return best["scale"], tries


def _train(student: PeftModel, teacher: ModelView, trajectories: TrajectorySet, tokenizer,
           config: BakingConfig, kl_reference: float, kl_calibration: float | None,
           retain: Sequence[Trajectory], unbaked: ModelView) -> list[EpochReport]:
    """Train to ``num_epochs``; with ``kl_calibration`` (target mode) stop early at the first report whose
    calibration strength reaches the target. Each step with ``retain`` also takes a batch of it (in turn,
    reshuffled each pass) held to ``unbaked``."""
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(trajectories.train) / config.batch_size)
    schedule_steps = max(1, math.ceil(config.full_epochs * steps_per_epoch))
    stop_step = max(1, math.ceil(config.num_epochs * steps_per_epoch))
    device = next(student.parameters()).device
    shuffler = random.Random(config.seed)
    history: list[EpochReport] = []
    step, losses, retain_losses = 0, [], []
    retain_order: list[Trajectory] = []
    while step < stop_step:
        order = list(trajectories.train)
        shuffler.shuffle(order)
        for start in range(0, len(order), config.batch_size):
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * _lr_factor(step, schedule_steps, config)
            batch = collate(order[start:start + config.batch_size], pad_token_id(tokenizer), device)
            optimizer.zero_grad(set_to_none=True)
            losses.append(kl_backward(teacher, student, batch, config.kl_chunk_tokens))
            if retain and config.retention_weight > 0:
                if len(retain_order) < config.batch_size:
                    retain_order += shuffler.sample(list(retain), len(retain))
                kept, retain_order = retain_order[:config.batch_size], retain_order[config.batch_size:]
                retain_losses.append(_retain_backward(unbaked, student, kept, tokenizer, config))
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            step += 1
            if step % steps_per_epoch == 0 or step == stop_step:
                heldout = mean_kl(teacher, plain(student), trajectories.heldout, tokenizer, config)
                calibration = None if kl_calibration is None else _calibration_strength(
                    student, teacher, trajectories.calibration, tokenizer, config, kl_calibration)
                row = EpochReport(epoch=step / steps_per_epoch, step=step, train_kl=sum(losses) / len(losses),
                                  heldout_kl=heldout, strength=1.0 - heldout / kl_reference,
                                  calibration_strength=calibration,
                                  retain_loss=sum(retain_losses) / len(retain_losses) if retain_losses else None)
                history.append(row)
                log.info("bake epoch %.2f step %d train_kl %.4f heldout_kl %.4f strength %.3f",
                         row.epoch, row.step, row.train_kl, row.heldout_kl, row.strength)
                losses, retain_losses = [], []
                if calibration is not None and calibration >= config.target_strength:
                    return history
            if step == stop_step:
                break
    return history


def save_adapter(result: BakeResult, out_dir: str | Path, tokenizer=None) -> Path:
    """Write the adapter (peft format) with a manifest: prompt, config, measured strength, base hash."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        result.model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_manifest(tmp, kind=ADAPTER_DIR_KIND, phase=PHASE, **result.report())
    return out_dir


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> PeftModel:
    """Attach a saved adapter to ``model``, refusing altered directories and a different base model."""
    adapter_dir = Path(adapter_dir)
    problems = model_dir_problems(adapter_dir)
    if problems:
        raise ArtifactError(f"{adapter_dir} is not a usable adapter directory: " + "; ".join(problems))
    manifest = read_manifest(adapter_dir)
    if manifest.get("kind") != ADAPTER_DIR_KIND:
        raise ArtifactError(f"{adapter_dir} holds a {manifest.get('kind')!r}, not a baked LoRA adapter")
    actual = base_weights_hash(model)
    if manifest["base_model_sha256"] != actual:
        raise ArtifactError(
            f"{adapter_dir} was baked on base weights {manifest['base_model_sha256'][:12]}..., but this model's "
            f"weights hash to {actual[:12]}...; load the base model it was baked on"
        )
    return PeftModel.from_pretrained(model, adapter_dir)


def export_merged(result: BakeResult, tokenizer, out_dir: str | Path) -> Path:
    """Merge the adapter into the weights and write a plain model directory (uses up ``result.model``)."""
    merged = result.merge()
    return save_model_dir(merged, tokenizer, Path(out_dir), phase=PHASE, extra={"baking": result.report()})
