"""Quiet-STaR's learning signal (Zelikman et al., 2024, arXiv 2403.09629) and the anti-theater checks.

Pure tensor functions: the reward of each sampled thought with its leave-one-out baseline, the
REINFORCE loss, the mixing head that blends predictions with and without a thought, and three checks
that thoughts do real work (measured inputs in, value / threshold / pass out).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from forge.criteria import is_met

# The spec's anti-theater thresholds (each check passes when its value is strictly above).
DIVERGENCE_THRESHOLD = 0.3
ABLATION_THRESHOLD = 0.02
CORRELATION_THRESHOLD = 0.5


def sequence_logprob(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """sum_i log softmax(logits[..., i, :])[tokens[..., i]] over the masked-in positions i.

    ``logits`` [..., m, V], ``tokens`` [..., m], ``mask`` [..., m] (1 = counted) -> [...]. With the
    true next tokens as ``tokens`` this is L_j, the log-likelihood a thought is rewarded by; with a
    thought's own tokens it is log p(T_j), the term REINFORCE differentiates.
    """
    picked = torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    if mask is not None:
        picked = picked * mask.to(picked.dtype)
    return picked.sum(dim=-1)


def leave_one_out_baseline(values: torch.Tensor) -> torch.Tensor:
    """b_j = (sum_k L_k - L_j) / (n - 1): the mean over the OTHER n - 1 thoughts (last dim = thoughts)."""
    n = values.shape[-1]
    if n < 2:
        raise ValueError(f"a leave-one-out baseline needs at least 2 thoughts per position, got {n}")
    return (values.sum(dim=-1, keepdim=True) - values) / (n - 1)


def thought_rewards(logp_with_thought: torch.Tensor) -> torch.Tensor:
    """r_j = L_j - (1/(n-1)) sum_{k != j} L_k.

    ``logp_with_thought`` [batch, positions, n_thoughts]: L_j = log p(x_{t+1..t+m} | x_{<=t}, T_j), the
    log-likelihood of the next m true tokens after thought j at position t. A thought is rewarded by how
    much better it predicts the text than the other thoughts sampled at the same position.
    """
    if logp_with_thought.dim() != 3:
        raise ValueError("logp_with_thought must be [batch, positions, n_thoughts], got shape "
                         f"{tuple(logp_with_thought.shape)}")
    return logp_with_thought - leave_one_out_baseline(logp_with_thought)


def reinforce_loss(rewards: torch.Tensor, thought_logprobs: torch.Tensor, mask: torch.Tensor | None = None,
                   positive_only: bool = False) -> torch.Tensor:
    """L = -(1/N) sum_{b,t,j} sg(r_j) * log p(T_j | x_{<=t}) over the N masked-in (b, t, j).

    ``rewards`` and ``thought_logprobs`` [batch, positions, n_thoughts]; ``mask`` [batch, positions]
    (1 = a real position). Rewards are constants (no gradient flows through them). ``positive_only``
    drops negative rewards, reinforcing only thoughts that beat their baseline.
    """
    if rewards.shape != thought_logprobs.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and thought_logprobs {tuple(thought_logprobs.shape)} "
                         "must have the same [batch, positions, n_thoughts] shape")
    weights = rewards.detach().clamp_min(0) if positive_only else rewards.detach()
    terms = weights * thought_logprobs
    if mask is None:
        return -terms.mean()
    expanded = mask.to(terms.dtype).unsqueeze(-1).expand_as(terms)
    return -(terms * expanded).sum() / expanded.sum().clamp_min(1.0)


class MixingHead(nn.Module):
    """w = sigmoid(MLP([h_base; h_thought])) in (0, 1); logits = w * logits_thought + (1 - w) * logits_base.

    The paper's shallow MLP (Linear 2H->H, ReLU, Linear H->1). The last layer starts at zero weights and
    bias logit(``init_weight``), so every position starts at w = init_weight: mostly the base prediction,
    which untrained thoughts then cannot disturb much.
    """

    def __init__(self, hidden_size: int, init_weight: float = 0.05):
        super().__init__()
        if not 0.0 < init_weight < 1.0:
            raise ValueError(f"init_weight must be in (0, 1), got {init_weight}")
        self.mlp = nn.Sequential(nn.Linear(2 * hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, 1))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.constant_(self.mlp[2].bias, math.log(init_weight / (1.0 - init_weight)))

    def mixing_weight(self, hidden_base: torch.Tensor, hidden_thought: torch.Tensor) -> torch.Tensor:
        """w [..., 1] from hidden states [..., H] before and after the thought."""
        return torch.sigmoid(self.mlp(torch.cat([hidden_base, hidden_thought], dim=-1)))

    def forward(self, hidden_base: torch.Tensor, hidden_thought: torch.Tensor, logits_base: torch.Tensor,
                logits_thought: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed logits [..., V], w [..., 1])."""
        weight = self.mixing_weight(hidden_base, hidden_thought)
        return weight * logits_thought + (1.0 - weight) * logits_base, weight


# ---------------------------------------------------------------- anti-theater checks

@dataclass(frozen=True)
class CheckResult:
    """One anti-theater check: the measured value against its threshold."""

    name: str  # which check
    value: float  # what was measured (nan when it cannot be measured)
    threshold: float  # the value must be strictly above this
    passed: bool  # value > threshold
    detail: str  # how the value was obtained, or why it could not be


def _result(name: str, value: float, threshold: float, detail: str) -> CheckResult:
    return CheckResult(name, value, threshold, is_met(value, ">", threshold), detail)  # nan is never met


def _as_lists(sequences) -> list[list[int]]:
    return [[int(token) for token in sequence] for sequence in sequences]


def thought_divergence(thought_tokens: Sequence[Sequence[int]], direct_tokens: Sequence[Sequence[int]],
                       threshold: float = DIVERGENCE_THRESHOLD) -> CheckResult:
    """Mean over pairs of 1 - |T ∩ D| / max(|T|, |D|), with ∩ the multiset intersection of token ids.

    T: a thought's tokens; D: the model's direct continuation at the same position (same length budget).
    Order-blind, so a thought that copies the continuation, shifted or shuffled, scores 0 (theater).
    """
    thoughts, directs = _as_lists(thought_tokens), _as_lists(direct_tokens)
    if len(thoughts) != len(directs) or not thoughts:
        raise ValueError("need as many thoughts as direct continuations (>= 1); got "
                         f"{len(thoughts)} and {len(directs)}")
    divergences = []
    for thought, direct in zip(thoughts, directs):
        longest = max(len(thought), len(direct))
        if longest == 0:
            raise ValueError("a thought and its direct continuation are both empty: nothing to compare")
        shared = sum((Counter(thought) & Counter(direct)).values())
        divergences.append(1.0 - shared / longest)
    value = sum(divergences) / len(divergences)
    return _result("divergence", value, threshold, f"mean token-multiset divergence over {len(divergences)} pairs")


def ablation_drop(correct_with_thoughts: torch.Tensor, correct_without_thoughts: torch.Tensor,
                  threshold: float = ABLATION_THRESHOLD) -> CheckResult:
    """acc(with thoughts) - acc(thoughts ablated), from per-item correctness (bool or 0/1) on the same items."""
    with_thoughts = torch.as_tensor(correct_with_thoughts).float().flatten()
    without = torch.as_tensor(correct_without_thoughts).float().flatten()
    if with_thoughts.shape != without.shape or with_thoughts.numel() == 0:
        raise ValueError("ablation needs the same non-empty items scored with and without thoughts; got "
                         f"{with_thoughts.numel()} and {without.numel()}")
    accuracy_with, accuracy_without = with_thoughts.mean().item(), without.mean().item()
    return _result("ablation_drop", accuracy_with - accuracy_without, threshold,
                   f"accuracy {accuracy_with:.4f} with thoughts, {accuracy_without:.4f} without, "
                   f"{with_thoughts.numel()} items")


def coherence_utility_correlation(coherence: torch.Tensor, utility: torch.Tensor,
                                  threshold: float = CORRELATION_THRESHOLD) -> CheckResult:
    """Pearson r between each thought's coherence score and its utility (e.g. its reward r_j).

    Needs >= 3 thoughts; when either side is constant r is undefined and the check fails (value nan).
    """
    x = torch.as_tensor(coherence).double().flatten()
    y = torch.as_tensor(utility).double().flatten()
    if x.shape != y.shape or x.numel() < 3:
        raise ValueError(f"correlation needs >= 3 paired scores; got {x.numel()} coherence and {y.numel()} utility")
    dx, dy = x - x.mean(), y - y.mean()
    denominator = (dx.square().sum() * dy.square().sum()).sqrt().item()
    if denominator == 0.0:
        return _result("correlation", float("nan"), threshold,
                       "coherence or utility is constant across thoughts: no correlation can be measured")
    value = (dx * dy).sum().item() / denominator
    return _result("correlation", value, threshold, f"Pearson r over {x.numel()} thoughts")


@dataclass(frozen=True)
class AntiTheaterReport:
    """The three anti-theater checks together."""

    divergence: CheckResult  # thoughts differ from the direct continuation
    ablation: CheckResult  # removing thoughts costs accuracy
    correlation: CheckResult  # coherent thoughts are the useful ones

    @property
    def all_passed(self) -> bool:
        return self.divergence.passed and self.ablation.passed and self.correlation.passed

    def metrics(self) -> dict[str, float]:
        """The spec's wandb names."""
        return {"anti_theater/divergence": self.divergence.value, "anti_theater/ablation": self.ablation.value,
                "anti_theater/correlation": self.correlation.value}
