"""MuonGrokfast: Muon for hidden matrices, AdamW for the rest, a Grokfast gradient filter and QK-clip.

One optimizer step does, in order:

1. Grokfast (Lee et al. 2024): per parameter, ``ema <- alpha*ema + (1-alpha)*g`` and ``g <- g + lambda*ema``
   (the filtered gradient is used for the update; ``p.grad`` itself is left untouched). As in the
   reference code, the EMA starts from the first gradient it sees. ``lambda = 0`` switches it off.
2. Muon (Jordan et al. 2024; scaling from Liu et al. 2025, "Muon is Scalable for LLM Training") for
   2-D hidden weights (tensors with more dims are flattened to ``(shape[0], -1)``):
   ``buf <- mu*buf + g``; ``u = g + mu*buf`` (Nesterov) or ``u = buf``; ``O = NS5(u)``;
   ``W <- W*(1 - lr*wd) - lr * 0.2*sqrt(max(rows, cols)) * O``. The 0.2*sqrt(max) factor gives the update
   an RMS of about 0.2, AdamW's typical update RMS, so Muon and AdamW can share learning rates.
3. AdamW (decoupled weight decay, bias-corrected, the same arithmetic as ``torch.optim.AdamW``) for
   embeddings, the LM head, norms, biases and every 0-D/1-D parameter.
4. QK-clip (MuonClip, Kimi K2): for every registered attention module whose last forward recorded
   ``max_attn_logit > threshold``, ``q_proj`` and ``k_proj`` are scaled by ``sqrt(threshold / max)`` each,
   so that logit becomes ``threshold``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

# Quintic Newton-Schulz coefficients from Keller Jordan's Muon: they push every singular value of the
# normalised input into roughly [0.7, 1.2] within 5 steps (not exactly 1: speed over precision).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
# Moonshot's update scale: 0.2 * sqrt(max(rows, cols)) matches AdamW's typical update RMS.
MUON_RMS_SCALE = 0.2


@dataclass
class MuonGrokfastConfig:
    """Hyperparameters of :class:`MuonGrokfast` (defaults follow the spec's Phase 1 Cognate settings)."""

    muon_lr: float = 1e-3  # learning rate of the Muon (hidden-matrix) group; spec: 1e-3 pretraining
    adam_lr: float = 1e-3  # learning rate of the AdamW groups (embeddings, head, norms, biases)
    momentum: float = 0.95  # Muon momentum coefficient mu
    nesterov: bool = True  # Muon uses the Nesterov look-ahead g + mu*buf instead of buf
    ns_steps: int = 5  # Newton-Schulz iterations that orthogonalise the Muon update
    weight_decay: float = 0.1  # decoupled weight decay of matrices (Muon, embeddings, head); 1-D params get none
    adam_betas: tuple[float, float] = (0.9, 0.95)  # AdamW (beta1, beta2)
    adam_eps: float = 1e-8  # AdamW denominator epsilon
    grokfast_alpha: float = 0.98  # Grokfast EMA decay alpha
    grokfast_lambda: float = 0.3  # Grokfast amplification lambda (spec: 0.3 Cognate); 0 disables the filter
    qk_clip_threshold: float | None = 30.0  # QK-clip max attention logit (spec: 30); None disables QK-clip

    def __post_init__(self) -> None:
        for name in ("muon_lr", "adam_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}; use e.g. 1e-3")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}; the usual value is 0.95")
        if self.ns_steps < 1:
            raise ValueError(f"ns_steps must be >= 1, got {self.ns_steps}; the usual value is 5")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}; use 0 to disable it")
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}; e.g. (0.9, 0.95)")
        if not self.adam_eps > 0:
            raise ValueError(f"adam_eps must be > 0, got {self.adam_eps}; e.g. 1e-8")
        if not 0.0 <= self.grokfast_alpha < 1.0:
            raise ValueError(f"grokfast_alpha must be in [0, 1), got {self.grokfast_alpha}; e.g. 0.98")
        if self.grokfast_lambda < 0:
            raise ValueError(f"grokfast_lambda must be >= 0, got {self.grokfast_lambda}; use 0 to disable Grokfast")
        if self.qk_clip_threshold is not None and not self.qk_clip_threshold > 0:
            raise ValueError(
                f"qk_clip_threshold must be > 0, got {self.qk_clip_threshold}; use None to disable QK-clip"
            )


def newton_schulz5(matrix: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximate the orthogonal factor U V^T of ``matrix`` (2-D) with the quintic Newton-Schulz iteration.

    Computed in float32; the input is normalised by its Frobenius norm and worked on in its wide
    orientation (transposed when rows > cols) so ``X X^T`` is the smaller Gram matrix.
    """
    if matrix.ndim != 2:
        raise ValueError(f"newton_schulz5 needs a 2-D matrix, got shape {tuple(matrix.shape)}; flatten it first")
    a, b, c = NS_COEFFICIENTS
    x = matrix.float()
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    x = x / (x.norm() + eps)
    for _ in range(steps):
        gram = x @ x.T
        poly = b * gram + c * (gram @ gram)
        x = a * x + poly @ x
    return x.T if transposed else x


def is_qk_clip_module(module: nn.Module) -> bool:
    """True for an attention module QK-clip can act on: nn.Linear q_proj/k_proj plus a max_attn_logit attribute."""
    return (
        isinstance(getattr(module, "q_proj", None), nn.Linear)
        and isinstance(getattr(module, "k_proj", None), nn.Linear)
        and hasattr(module, "max_attn_logit")
    )


class MuonGrokfast(torch.optim.Optimizer):
    """Muon + AdamW with a Grokfast gradient filter and QK-clip (see the module docstring for the maths).

    ``param_groups`` are dicts with ``params`` and ``use_muon`` (bool); any hyperparameter key
    (``lr``, ``weight_decay``, ``momentum``, ``nesterov``, ``ns_steps``, ``betas``, ``eps``,
    ``grokfast_alpha``, ``grokfast_lambda``) may override the config per group, and a missing ``lr``
    becomes ``config.muon_lr`` or ``config.adam_lr`` by group kind. Every group keeps its ``lr``, so LR
    schedulers and divergence rollbacks change it the usual way. ``qk_clip_modules`` are attention
    modules accepted by :func:`is_qk_clip_module`. After each step, ``last_qk_clip`` holds
    ``{"qk_clips": clips this step, "qk_clips_total": clips so far, "max_attn_logit": largest recorded
    logit before clipping}`` (the last key only when some module had recorded one).
    """

    def __init__(
        self,
        param_groups: Iterable[dict[str, Any]],
        config: MuonGrokfastConfig | None = None,
        qk_clip_modules: Iterable[nn.Module] = (),
    ) -> None:
        self.config = config if config is not None else MuonGrokfastConfig()
        defaults = dict(
            momentum=self.config.momentum,
            nesterov=self.config.nesterov,
            ns_steps=self.config.ns_steps,
            weight_decay=self.config.weight_decay,
            betas=tuple(self.config.adam_betas),
            eps=self.config.adam_eps,
            grokfast_alpha=self.config.grokfast_alpha,
            grokfast_lambda=self.config.grokfast_lambda,
        )
        groups = []
        for index, group in enumerate(param_groups):
            if not isinstance(group, dict) or "use_muon" not in group:
                raise ValueError(
                    f"param group {index} must be a dict with 'params' and 'use_muon' (True for hidden "
                    "matrices, False for AdamW); build_muon_grokfast(model, config) makes them for you"
                )
            group = dict(group)
            group["params"] = list(group["params"])
            group.setdefault("lr", self.config.muon_lr if group["use_muon"] else self.config.adam_lr)
            if group["use_muon"]:
                for param in group["params"]:
                    if param.ndim < 2:
                        raise ValueError(
                            f"Muon group {index} holds a {param.ndim}-D parameter of shape {tuple(param.shape)};"
                            " Muon only orthogonalises matrices: put 0-D/1-D parameters in an AdamW group"
                        )
            groups.append(group)
        super().__init__(groups, defaults)
        self.qk_clip_modules = list(qk_clip_modules)
        for module in self.qk_clip_modules:
            if not is_qk_clip_module(module):
                raise ValueError(
                    f"{type(module).__name__} cannot be QK-clipped: it needs nn.Linear q_proj and k_proj "
                    "and a max_attn_logit attribute set by its forward"
                )
        self.qk_clips_total = 0
        self.last_qk_clip: dict[str, float] = {"qk_clips": 0, "qk_clips_total": 0}

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One update of every parameter that has a gradient, then QK-clip; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise ValueError("MuonGrokfast does not support sparse gradients; use dense embeddings")
                grad = self._grokfast(param, group)
                if group["use_muon"]:
                    self._muon_update(param, grad, group)
                else:
                    self._adamw_update(param, grad, group)
        self.apply_qk_clip()
        return loss

    def _grokfast(self, param: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        grad = param.grad
        lam = group["grokfast_lambda"]
        if lam == 0:
            return grad
        state = self.state[param]
        alpha = group["grokfast_alpha"]
        if "grokfast_ema" not in state:
            state["grokfast_ema"] = grad.clone()
        ema = state["grokfast_ema"]
        ema.mul_(alpha).add_(grad, alpha=1 - alpha)
        return grad.add(ema, alpha=lam)

    def _muon_update(self, param: torch.Tensor, grad: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[param]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(param)
        buf = state["momentum_buffer"]
        mu = group["momentum"]
        buf.mul_(mu).add_(grad)
        update = grad.add(buf, alpha=mu) if group["nesterov"] else buf
        matrix = update.reshape(update.size(0), -1)
        ortho = newton_schulz5(matrix, steps=group["ns_steps"])
        scale = MUON_RMS_SCALE * math.sqrt(max(matrix.shape))
        lr = group["lr"]
        if group["weight_decay"] != 0:
            param.mul_(1 - lr * group["weight_decay"])
        param.add_(ortho.view_as(param).to(param.dtype), alpha=-lr * scale)

    def _adamw_update(self, param: torch.Tensor, grad: torch.Tensor, group: dict[str, Any]) -> None:
        # Same operation order as torch.optim.AdamW's single-tensor path, so results match bit for bit.
        state = self.state[param]
        if "step" not in state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        state["step"] += 1
        step = state["step"].item()
        if group["weight_decay"] != 0:
            param.mul_(1 - lr * group["weight_decay"])
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(group["eps"])
        param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)

    @torch.no_grad()
    def apply_qk_clip(self) -> dict[str, float]:
        """Scale q_proj/k_proj of every module whose recorded max logit exceeds the threshold; returns stats.

        Biases are scaled too, so the logit (linear in q and in k) scales by exactly threshold/max. As in
        MuonClip, the logit is the one recorded by the step's own forward. The module's ``max_attn_logit``
        is then set to the threshold (what the clip scaled it to), so a second call before the next
        forward does not clip again.
        """
        threshold = self.config.qk_clip_threshold
        clips = 0
        largest = None
        for module in self.qk_clip_modules:
            logit = module.max_attn_logit
            if logit is None:
                continue
            logit = float(logit)
            largest = logit if largest is None else max(largest, logit)
            if threshold is None or logit <= threshold:
                continue
            factor = math.sqrt(threshold / logit)
            for proj in (module.q_proj, module.k_proj):
                proj.weight.mul_(factor)
                if proj.bias is not None:
                    proj.bias.mul_(factor)
            module.max_attn_logit = float(threshold)
            clips += 1
        self.qk_clips_total += clips
        self.last_qk_clip = {"qk_clips": clips, "qk_clips_total": self.qk_clips_total}
        if largest is not None:
            self.last_qk_clip["max_attn_logit"] = largest
        return self.last_qk_clip

    def state_dict(self) -> dict[str, Any]:
        """The torch optimizer state plus the running QK-clip count."""
        state = super().state_dict()
        state["qk_clips_total"] = self.qk_clips_total
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (param groups keep their saved lr and hyperparameters)."""
        state_dict = dict(state_dict)
        self.qk_clips_total = int(state_dict.pop("qk_clips_total", 0))
        super().load_state_dict(state_dict)


def split_parameters(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Sort trainable parameters into ``muon`` (hidden matrices), ``adamw_decay`` (embeddings, LM head)
    and ``adamw_no_decay`` (norms, biases, every 0-D/1-D tensor); tied weights are counted once."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head_ids = {id(m.weight) for name, m in model.named_modules() if name.rsplit(".", 1)[-1] == "lm_head"
                and isinstance(getattr(m, "weight", None), torch.Tensor)}
    get_output_embeddings = getattr(model, "get_output_embeddings", None)
    if callable(get_output_embeddings):
        head = get_output_embeddings()
        if isinstance(getattr(head, "weight", None), torch.Tensor):
            head_ids.add(id(head.weight))
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {"muon": [], "adamw_decay": [], "adamw_no_decay": []}
    for name, param in model.named_parameters():  # deduplicates tied parameters
        if not param.requires_grad:
            continue
        if param.ndim < 2:
            groups["adamw_no_decay"].append((name, param))
        elif id(param) in embedding_ids or id(param) in head_ids:
            groups["adamw_decay"].append((name, param))
        else:
            groups["muon"].append((name, param))
    return groups


def build_muon_grokfast(model: nn.Module, config: MuonGrokfastConfig | None = None) -> MuonGrokfast:
    """MuonGrokfast over ``model``'s trainable parameters, split by :func:`split_parameters`, with QK-clip
    on every attention module that has q_proj/k_proj and records ``max_attn_logit``.

    Works on any ``transformers`` causal LM; models whose attention records no ``max_attn_logit``
    simply get no QK-clip (``optimizer.qk_clip_modules`` is empty).
    """
    config = config if config is not None else MuonGrokfastConfig()
    split = split_parameters(model)
    if not any(split.values()):
        raise ValueError(f"{type(model).__name__} has no trainable parameters; unfreeze some before training")
    param_groups = [
        {"name": "muon", "params": [p for _, p in split["muon"]], "use_muon": True},
        {"name": "adamw_decay", "params": [p for _, p in split["adamw_decay"]], "use_muon": False},
        {"name": "adamw_no_decay", "params": [p for _, p in split["adamw_no_decay"]], "use_muon": False,
         "weight_decay": 0.0},
    ]
    param_groups = [group for group in param_groups if group["params"]]
    qk_modules = [module for module in model.modules() if is_qk_clip_module(module)]
    return MuonGrokfast(param_groups, config, qk_clip_modules=qk_modules)
