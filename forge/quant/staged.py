"""Calibrated, staged ternarisation under an accuracy guard (spec Phase 4).

Block by block, linear layers become BitLinear; after each block the caller's ``evaluate(model)``
(higher is better, e.g. held-out accuracy; callers keep it with its description in a :class:`Guard`) is
compared with the float model's score. A block whose quantization makes the relative drop exceed
``layer_revert_drop`` is put back in float. A last guarded step stores what is left in float (embedding,
head, preserved and reverted linears) as int4 groups or int8 rows (``QuantConfig.float_layers``; when the
guard reverts int4, int8 is tried next). With ``heal_steps``, each quantized block is first fine-tuned
through the straight-through estimator on the fine-tuning text, then judged (``heal_objective``: the text's next
tokens, or the float model's own predictions on it: distillation keeps what the model did beyond the text, e.g.
the thinking format). If the whole model still loses
more than ``max_total_drop``, the run starts again with the conservative config; above
``finetune_above_drop`` the model is fine-tuned with the straight-through estimator.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn

from forge.baking.kl import token_kl_sum
from forge.quant import kernels
from forge.quant.bitlinear import BitLinear, absmean_ternarize
from forge.quant.config import QuantConfig
from forge.quant.convert import (edge_block_patterns, int8_candidates, layer_groups, quantizable_linears,
                                 restore, to_bitlinear, to_int4, to_int8)
from forge.quant.int4 import Int4Embedding, Int4Linear
from forge.quant.int8 import Int8Embedding, Int8Linear

log = logging.getLogger(__name__)

Evaluate = Callable[[nn.Module], float]
INT8_GROUP = "int8 rows (embedding, head, float linears)"
INT4_GROUP = "int4 groups (embedding, head, float linears)"
# The storage steps of each QuantConfig.float_layers, tried in order until the guard keeps one.
STORAGE_STEPS = {"int4": (INT4_GROUP, INT8_GROUP), "int8": (INT8_GROUP,), "float": ()}


@dataclass(frozen=True)
class Guard:
    """The judge of every staged step, chosen by the caller (the phase): a score and what it measures."""

    evaluate: Evaluate  # model -> higher-is-better score, positive on the float model
    description: str  # recorded as the run's guard metric


@dataclass
class GroupStep:
    """What happened to one block of layers."""

    group: str  # block name ("model.layers.3"), a lone layer's name, INT4_GROUP or INT8_GROUP
    layers: list[str]  # layers in the block
    accuracy: float  # evaluate(model) with this block (and every kept one before it) quantized
    drop: float  # relative drop against the float model
    reverted: bool  # True when the block went back to float


@dataclass
class StagedResult:
    """Outcome of :func:`staged_quantize`; drops are relative: (before - after) / before."""

    config: QuantConfig  # the config of the attempt that was kept
    conservative: bool  # True when the conservative config was used after a too-large drop
    accuracy_before: float  # float model
    accuracy_quantized: float  # after staged quantization, before fine-tuning
    accuracy_final: float  # after fine-tuning if it ran, else accuracy_quantized
    finetuned: bool  # straight-through fine-tuning ran
    steps: list[GroupStep]  # every block of the kept attempt, in order
    quantized: list[str]  # layers now BitLinear
    reverted: list[str]  # layers whose ternarisation the guard undid
    int8: list[str] = field(default_factory=list)  # layers now stored as int8 rows
    int4: list[str] = field(default_factory=list)  # layers now stored as int4 groups
    first_attempt_drop: float | None = None  # drop of the default attempt when it was discarded
    scale_corrections: dict[str, float] = field(default_factory=dict)  # calibrated gamma multipliers

    @property
    def drop_quantized(self) -> float:
        return relative_drop(self.accuracy_before, self.accuracy_quantized)

    @property
    def drop_final(self) -> float:
        return relative_drop(self.accuracy_before, self.accuracy_final)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.update(drop_quantized=self.drop_quantized, drop_final=self.drop_final)
        return out


def relative_drop(before: float, after: float) -> float:
    return (before - after) / before


@torch.no_grad()
def calibrate_scales(model: nn.Module, names: Sequence[str], batches: Sequence[torch.Tensor],
                     zero_threshold: float) -> dict[str, float]:
    """Per layer, the multiplier on gamma that best fits (least squares) the float layer's outputs.

    The inputs each layer sees in the float model on ``batches`` (token ids) are quantized to 8 bits,
    multiplied by the ternary weight, and compared with the float output: scale = <y, y_t> / <y_t, y_t>.
    """
    sums = {name: [0.0, 0.0] for name in names}
    ternary = {name: absmean_ternarize(model.get_submodule(name).weight, zero_threshold) for name in names}

    def hook(name):
        def accumulate(module, args, output):
            t, gamma = ternary[name]
            q, s = kernels.quantize_activations(args[0].to(torch.float32))
            y_t = torch.nn.functional.linear(q * s, t.to(torch.float32)) * gamma
            y = output.to(torch.float32) - (module.bias.to(torch.float32) if module.bias is not None else 0)
            sums[name][0] += float((y * y_t).sum())
            sums[name][1] += float((y_t * y_t).sum())
        return accumulate

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in names]
    was_training = model.training
    model.eval()
    try:
        for input_ids in batches:
            model(input_ids=input_ids)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: (num / den if den > 0 and num > 0 else 1.0) for name, (num, den) in sums.items()}


def finetune_ste(model: nn.Module, batches: Sequence[torch.Tensor], epochs: int, lr: float,
                 teacher: nn.Module | None = None) -> list[float]:
    """Fine-tuning of all float parameters through the straight-through estimator: causal-LM loss on the batches, or
    with ``teacher`` (the float model before quantization) the mean token KL from its predictions (distillation)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    model.train()
    for _ in range(epochs):
        for input_ids in batches:
            if teacher is None:
                loss = model(input_ids=input_ids, labels=input_ids).loss
            else:
                with torch.no_grad():
                    target = teacher(input_ids=input_ids).logits
                loss = token_kl_sum(target, model(input_ids=input_ids).logits) / input_ids.numel()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    model.eval()
    return losses


def heal(model: nn.Module, batches: Sequence[torch.Tensor], steps: int, lr: float,
         teacher: nn.Module | None = None) -> list[float]:
    """``steps`` straight-through fine-tuning steps, cycling over ``batches`` (none: no step); ``teacher`` as in
    :func:`finetune_ste`."""
    if not steps or not batches:
        return []
    return finetune_ste(model, [batches[i % len(batches)] for i in range(steps)], 1, lr, teacher)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every weight, to put back after healing moved them."""
    return {key: value.clone() for key, value in model.state_dict().items()}


def _quantizable(model, config: QuantConfig) -> list[str]:
    """The linears ``config`` would ternarise (a conservative config keeping the edge blocks of a two-block
    model in float leaves none: then the first attempt stands)."""
    preserve = tuple(config.preserve_layers) + (edge_block_patterns(model) if config.preserve_edge_blocks else ())
    return quantizable_linears(model, preserve, config.min_out_features)


def _attempt(model, evaluate: Evaluate, config: QuantConfig, before: float,
             calibration_batches: Sequence[torch.Tensor], heal_batches: Sequence[torch.Tensor] = (),
             teacher: nn.Module | None = None) -> tuple[list[GroupStep], dict[str, nn.Module], dict[str, float]]:
    names = _quantizable(model, config)
    if not names:
        raise ValueError("no linear layer left to quantize: the preserve rules cover every nn.Linear "
                         "(or the model has none); loosen preserve_layers / preserve_edge_blocks")
    corrections = (calibrate_scales(model, names, calibration_batches, config.zero_threshold)
                   if calibration_batches else {name: 1.0 for name in names})
    steps, kept = [], {}

    def guarded(group: str, layers: list[str], originals: dict[str, nn.Module],
                previous: dict[str, torch.Tensor] | None) -> bool:
        """Judge the model with ``layers`` quantized (and healed); revert them above the drop limit. True when
        kept. A reverted block leaves the model as it was before it (``previous``: its weights then, when
        healing may have moved the others)."""
        heal(model, heal_batches, config.heal_steps, config.heal_lr, teacher)
        with torch.no_grad():
            accuracy = float(evaluate(model))
        drop = relative_drop(before, accuracy)
        reverted = drop > config.layer_revert_drop
        if reverted:
            restore(model, originals)
            if previous is not None:
                model.load_state_dict(previous)
        else:
            kept.update(originals)
        log.info("block %s: accuracy %.4f, drop %.1f%%%s", group, accuracy, 100 * drop,
                 " -> reverted" if reverted else "")
        steps.append(GroupStep(group, list(layers), accuracy, drop, reverted))
        return not reverted

    def snapshot() -> dict[str, torch.Tensor] | None:
        healing = config.heal_steps and heal_batches
        return _weights(model) if healing else None

    for group, layers in layer_groups(names).items():
        previous = snapshot()
        originals = to_bitlinear(model, layers, config.zero_threshold)
        for name in layers:
            model.get_submodule(name).scale_correction.fill_(corrections[name])
        guarded(group, layers, originals, previous)
    layers = int8_candidates(model, config.min_out_features)  # known once the ternary guard has decided
    for group in STORAGE_STEPS[config.float_layers] if layers else ():
        previous = snapshot()
        originals = (to_int4(model, layers, config.int4_group_size) if group == INT4_GROUP
                     else to_int8(model, layers))
        if guarded(group, layers, originals, previous):
            break
    return steps, kept, corrections


def staged_quantize(model: nn.Module, evaluate: Evaluate, config: QuantConfig, *,
                    conservative: QuantConfig | None = None,
                    calibration_ids: torch.Tensor | None = None,
                    finetune_ids: torch.Tensor | None = None, batch_size: int = 8) -> StagedResult:
    """Ternarise ``model`` in place block by block under the accuracy guard; see the module docstring.

    ``evaluate(model) -> float`` must be higher-is-better and positive on the float model.
    ``calibration_ids`` / ``finetune_ids`` are token ids (sequences, seq_len); the first
    ``config.calibration_samples`` sequences calibrate. Without them scales stay plain absmean and no
    fine-tuning runs. The model is left with BitLinear layers: pack it with
    :func:`forge.quant.convert.pack_model` to store it.
    """
    model.eval()
    with torch.no_grad():
        before = float(evaluate(model))
    if not before > 0:
        raise ValueError(f"evaluate(model) gave {before} on the float model: the guard needs a positive, "
                         "higher-is-better score (an accuracy, or exp(-loss)) to measure relative drops")

    def attempt(cfg: QuantConfig):
        calibration = (batches(calibration_ids[:cfg.calibration_samples], batch_size)
                       if calibration_ids is not None and cfg.calibration_samples else [])
        healing = batches(finetune_ids, batch_size) if finetune_ids is not None and cfg.heal_steps else []
        steps, kept, corrections = _attempt(model, evaluate, cfg, before, calibration, healing, teacher_for(cfg))
        with torch.no_grad():
            return steps, kept, corrections, float(evaluate(model))

    # distillation's teacher: the float model as it came, frozen, for whichever config distils
    distill = "distill" in (config.heal_objective, conservative.heal_objective if conservative else None)
    teacher = copy.deepcopy(model).eval().requires_grad_(False) if distill else None

    def teacher_for(cfg: QuantConfig) -> nn.Module | None:
        return teacher if cfg.heal_objective == "distill" else None

    float_state = _weights(model) if config.heal_steps else None
    # Judged on the float model: a conservative config keeping a two-block model's edge blocks leaves nothing.
    conservative = conservative if conservative is not None and _quantizable(model, conservative) else None
    steps, kept, corrections, quantized_accuracy = attempt(config)
    first_drop, used_conservative = None, False
    if relative_drop(before, quantized_accuracy) > config.max_total_drop and conservative is not None:
        first_drop = relative_drop(before, quantized_accuracy)
        log.info("drop %.1f%% exceeds %.0f%%: starting again with the conservative config",
                 100 * first_drop, 100 * config.max_total_drop)
        restore(model, kept)
        if float_state is not None:  # healing also moved the weights that stayed float
            model.load_state_dict(float_state)
        config, used_conservative = conservative, True
        steps, kept, corrections, quantized_accuracy = attempt(config)
    final_accuracy, finetuned = quantized_accuracy, False
    if (relative_drop(before, quantized_accuracy) > config.finetune_above_drop and finetune_ids is not None
            and kept and config.finetune_epochs):
        finetune_ste(model, batches(finetune_ids, batch_size), config.finetune_epochs, config.finetune_lr,
                     teacher_for(config))
        with torch.no_grad():
            final_accuracy = float(evaluate(model))
        finetuned = True
    quantized = [n for n, m in model.named_modules() if isinstance(m, BitLinear)]
    int8 = [n for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, (Int8Embedding, Int8Linear))]
    int4 = [n for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, (Int4Embedding, Int4Linear))]
    reverted = [name for step in steps if step.reverted and step.group not in (INT4_GROUP, INT8_GROUP)
                for name in step.layers]
    return StagedResult(config=config, conservative=used_conservative, accuracy_before=before,
                        accuracy_quantized=quantized_accuracy, accuracy_final=final_accuracy,
                        finetuned=finetuned, steps=steps, quantized=quantized, reverted=reverted, int8=int8, int4=int4,
                        first_attempt_drop=first_drop,
                        scale_corrections={n: corrections[n] for n in quantized})


def batches(ids: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split (sequences, seq_len) token ids into mini-batches."""
    if ids.dim() != 2:
        raise ValueError(f"token ids must have shape (sequences, seq_len), got {tuple(ids.shape)}")
    return list(ids.split(batch_size))
