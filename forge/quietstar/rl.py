"""Quiet-STaR Step 2: reinforce the thoughts that help predict the text (Zelikman et al. 2024, arXiv 2403.09629).

One episode (= one optimizer step): a batch of packed training sequences and ``positions_per_sequence``
token positions shared by the batch. At each position t, ``num_thoughts`` thoughts are sampled in
parallel (prefix + ``[thinking]``, then exactly ``thought_tokens`` sampled tokens, then a forced
``[/endthinking]``); the next ``n_true`` true tokens are teacher-forced after each thought and after the
bare prefix, and the ``MixingHead`` blends the two predictions. The loss is

    NLL of the true tokens under the mixed prediction
    + REINFORCE on the thoughts' log-probs, rewards r_j = L_j - mean_{k != j} L_k (thoughts above
      ``reward_threshold`` only)
    + kl_coefficient * KL(model || reference) of the base next-token distributions at those positions.

Every ``check_every`` episodes (and after the last) the three anti-theater checks run on held-out items.
A passing check is checkpointed; a failing one rolls back to the last passing state (the start state if
none), doubles the KL coefficient and raises the reward threshold; after ``max_rollbacks`` the run stops.
All sampling uses generators seeded from (seed, rollbacks, episode), so a resumed run repeats exactly
what an uninterrupted one does.
"""
from __future__ import annotations

import copy
import io
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load, save
from torch import nn

from forge.artifacts import atomic_write_bytes
from forge.baking.hidden import final_hidden
from forge.baking.kl import token_kl_sum
from forge.data.lm_dataset import pack_token_ids
from forge.decoding import IncrementalDecoder, draw, sample_next
from forge.optim import MuonGrokfastConfig, build_muon_grokfast
from forge.quietstar.rewards import (ABLATION_THRESHOLD, CORRELATION_THRESHOLD, DIVERGENCE_THRESHOLD,
                                     AntiTheaterReport, MixingHead, ablation_drop, coherence_utility_correlation,
                                     reinforce_loss, sequence_logprob, thought_divergence, thought_rewards)
from forge.quietstar.tokens import THINK_END, THINK_START, thinking_token_ids

CHECKPOINT = "quietstar_rl.pt"
# The reward threshold a rollback sets when it was 0 (x1.5 cannot raise 0). Rewards are log-likelihood
# gains in nats over n_true tokens, scaled by the mixing weight (0.05 at the start), so early rewards are
# ~1e-3..1e-2 nats: 1e-3 drops the thoughts that barely beat their siblings without silencing REINFORCE.
FIRST_RAISED_THRESHOLD = 1e-3


@dataclass
class ThoughtRLConfig:
    """Quiet-STaR Step 2 (RL on thoughts); defaults are the spec's where it gives one."""

    episodes: int = 20  # optimizer steps (the spec runs 10000; the tiny preset runs few)
    positions_per_sequence: int = 4  # token positions per batch where thoughts are sampled (shared by its rows)
    num_thoughts: int = 4  # thoughts per position (the leave-one-out baseline needs >= 2)
    thought_tokens: int = 8  # tokens inside a thought, between [thinking] and [/endthinking]
    n_true: int = 4  # next true tokens whose log-likelihood is the reward
    seq_len: int = 64  # length of the packed training sequences
    batch_size: int = 4  # training sequences per episode
    temperature: float = 1.0  # thought sampling temperature (also the policy REINFORCE differentiates)
    kl_coefficient: float = 0.1  # spec: KL to the Step 1 model against drift (doubled on each rollback)
    reward_threshold: float = 0.0  # only thoughts whose reward exceeds it are reinforced (x1.5 on each rollback)
    optimizer: MuonGrokfastConfig = field(default_factory=lambda: MuonGrokfastConfig(
        muon_lr=5e-4, adam_lr=5e-4, grokfast_lambda=0.1, qk_clip_threshold=25.0))  # spec RL settings
    grad_clip: float = 1.0  # max global gradient norm of model + mixing head (RL gradients are noisy)
    mixing_init_weight: float = 0.05  # the mixing head's starting weight on the thought-conditioned prediction
    check_every: int = 10  # anti-theater checks every K episodes, and after the last (spec: 1000)
    check_items: int = 16  # held-out items per check (the first check_items of ``heldout``)
    divergence_threshold: float = DIVERGENCE_THRESHOLD  # spec: thoughts differ from the direct continuation (> 0.3)
    ablation_threshold: float = ABLATION_THRESHOLD  # spec: removing thoughts costs accuracy (> 0.02)
    correlation_threshold: float = CORRELATION_THRESHOLD  # spec: coherence tracks reward (r > 0.5)
    max_rollbacks: int = 3  # failing checks tolerated; the run stops after this many rollbacks
    seed: int = 0  # seeds batch, position, thought and held-out-split choices

    def __post_init__(self) -> None:
        for name in ("episodes", "positions_per_sequence", "thought_tokens", "n_true", "seq_len", "batch_size",
                     "check_every", "check_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"quietstar.rl.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_thoughts < 2:
            raise ValueError(f"quietstar.rl.num_thoughts must be >= 2 (the reward baseline is the mean of the "
                             f"other thoughts), got {self.num_thoughts}")
        if self.seq_len - self.n_true < self.positions_per_sequence:
            raise ValueError(f"quietstar.rl.seq_len={self.seq_len} leaves {self.seq_len - self.n_true} positions "
                             f"with {self.n_true} true tokens after them, fewer than positions_per_sequence="
                             f"{self.positions_per_sequence}: raise seq_len or lower n_true")
        if not self.temperature > 0:
            raise ValueError(f"quietstar.rl.temperature must be > 0, got {self.temperature}")
        if self.kl_coefficient < 0 or self.reward_threshold < 0:
            raise ValueError("quietstar.rl.kl_coefficient and reward_threshold must be >= 0 (rollbacks raise "
                             f"them), got {self.kl_coefficient} and {self.reward_threshold}")
        if not self.grad_clip > 0:
            raise ValueError(f"quietstar.rl.grad_clip must be > 0, got {self.grad_clip}")
        if self.max_rollbacks < 0:
            raise ValueError(f"quietstar.rl.max_rollbacks must be >= 0, got {self.max_rollbacks}")


@dataclass
class ThoughtRLReport:
    """What one ``train_thoughts`` call did (measured values only)."""

    episodes: int  # episode counter at the end (rolled-back episodes are not counted)
    optimizer_steps: int  # optimizer steps taken, rolled-back ones included
    history: list[dict[str, float]]  # per optimizer step: episode and the rl/* metrics
    checks: list[dict[str, Any]]  # per check: episode, the three values, passed
    rollbacks: list[dict[str, Any]]  # per rollback: failed episode, restored episode, failed values, new coefficients
    kl_coefficient: float  # at the end
    reward_threshold: float  # at the end
    stopped_reason: str  # "completed" or "max_rollbacks"
    wall_time_s: float  # of this call
    mixing_head: MixingHead  # trained; save with save_mixing_head(head, dir / "mixing_head.safetensors")

    @property
    def reward_curve(self) -> list[float]:
        """``rl/reward`` of every optimizer step, in the order they were taken."""
        return [row["rl/reward"] for row in self.history]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the mixing head's weights are saved separately)."""
        return {"episodes": self.episodes, "optimizer_steps": self.optimizer_steps,
                "reward_curve": self.reward_curve, "history": self.history, "checks": self.checks,
                "rollbacks": self.rollbacks, "kl_coefficient": self.kl_coefficient,
                "reward_threshold": self.reward_threshold, "stopped_reason": self.stopped_reason,
                "wall_time_s": self.wall_time_s,
                "mixing_head": {"hidden_size": self.mixing_head.mlp[0].in_features // 2,
                                "parameters": sum(p.numel() for p in self.mixing_head.parameters())}}


# ---------------------------------------------------------------- mixing head files

def save_mixing_head(head: MixingHead, path: Path) -> Path:
    """Write the head's weights as safetensors (atomically), with its hidden size in the metadata."""
    hidden_size = head.mlp[0].in_features // 2
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in head.state_dict().items()}
    atomic_write_bytes(Path(path), save(tensors, metadata={"hidden_size": str(hidden_size)}))
    return Path(path)


def load_mixing_head(path: Path) -> MixingHead:
    """A ``MixingHead`` with the weights ``save_mixing_head`` wrote to ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no mixing head at {path}: Quiet-STaR Step 2 writes mixing_head.safetensors "
                                "next to the model; rerun that phase")
    data = path.read_bytes()
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if "hidden_size" not in metadata:
        raise ValueError(f"{path} has no hidden_size metadata: it was not written by save_mixing_head")
    head = MixingHead(int(metadata["hidden_size"]))
    head.load_state_dict(load(data))
    return head


# ---------------------------------------------------------------- thoughts

@dataclass(frozen=True)
class ThinkIds:
    """Ids of the thought wrapper tokens."""

    start: int  # [thinking]
    end: int  # [/endthinking]

    @classmethod
    def of(cls, tokenizer) -> "ThinkIds":
        ids = thinking_token_ids(tokenizer)
        return cls(ids[THINK_START], ids[THINK_END])


def thought_policy(logits: torch.Tensor, think: ThinkIds, temperature: float) -> torch.Tensor:
    """Log-probs of the next thought token: logits / temperature, with the wrapper tokens excluded.

    Thoughts have a fixed length (as in the paper), so neither wrapper token may appear inside one;
    sampling and REINFORCE use this same distribution.
    """
    logits = logits.float() / temperature
    banned = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    banned[[think.start, think.end]] = True
    return torch.log_softmax(logits.masked_fill(banned, float("-inf")), dim=-1)


@torch.no_grad()
def sample_thoughts(model: nn.Module, context: torch.Tensor, think: ThinkIds, length: int, temperature: float,
                    generator: torch.Generator) -> torch.Tensor:
    """``length`` thought tokens sampled after ``context`` (R, t) + ``[thinking]``, all rows in parallel -> (R, length).

    Decoding continues the model's KV cache (``forge.decoding``).
    """
    start = torch.full((context.shape[0], 1), think.start, dtype=context.dtype, device=context.device)
    decoder = IncrementalDecoder(model, torch.cat([context, start], dim=1))
    for _ in range(length):
        probs = thought_policy(decoder.logits(), think, temperature).exp()
        decoder.append(draw(probs, generator))
    return decoder.sequence[:, -length:]


@torch.no_grad()
def greedy_continuation(model: nn.Module, context: torch.Tensor, length: int) -> torch.Tensor:
    """The model's direct (no thought) greedy continuation of ``context`` (R, t) -> (R, length)."""
    decoder = IncrementalDecoder(model, context)
    for _ in range(length):
        decoder.append(sample_next(decoder.logits(), 0.0, None))
    return decoder.sequence[:, -length:]


def _head_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    # Our models' logits are exactly lm_head(final hidden); running it on chosen positions only saves
    # the full-vocabulary logits of every other position.
    return model.get_output_embeddings()(hidden)


@dataclass
class ThoughtScores:
    """Predictions at one position with and without each thought (B rows, n thoughts, m true tokens)."""

    logp_mixed: torch.Tensor  # (B, n) L_j: log p of the m true tokens under the mixed prediction after thought j
    logp_base: torch.Tensor  # (B,) log p of the m true tokens without a thought
    thought_logp: torch.Tensor  # (B, n) log p(T_j) under the sampling policy (what REINFORCE differentiates)
    mixing_weight: torch.Tensor  # (B, n, m) the head's weight on the thought-conditioned prediction
    mixed_logits: torch.Tensor  # (B, n, m, V)
    base_logits: torch.Tensor  # (B, m, V)


def score_thoughts(model: nn.Module, head: MixingHead, context: torch.Tensor, truth: torch.Tensor,
                   thoughts: torch.Tensor, think: ThinkIds, temperature: float) -> ThoughtScores:
    """Teacher-force the true tokens after each thought and after the bare context; blend with ``head``.

    ``context`` (B, t) ends at the position the thoughts follow; ``truth`` (B, m) are the next true tokens;
    ``thoughts`` (B, n, K). Differentiable in the model and the head.
    """
    rows, n, length = thoughts.shape
    t, m = context.shape[1], truth.shape[1]
    base_ids = torch.cat([context, truth[:, :-1]], dim=1)  # position t-1+i predicts truth[:, i]
    base_hidden = final_hidden(model, base_ids)[:, t - 1:]  # (B, m, H)
    base_logits = _head_logits(model, base_hidden)

    def column(token: int) -> torch.Tensor:
        return torch.full((rows * n, 1), token, dtype=context.dtype, device=context.device)

    thought_ids = torch.cat([context.repeat_interleave(n, dim=0), column(think.start),
                             thoughts.reshape(rows * n, length), column(think.end),
                             truth[:, :-1].repeat_interleave(n, dim=0)], dim=1)
    # Positions t .. t+K-1 predict the thought's tokens; t+K predicts the forced [/endthinking];
    # t+K+1+i (the [/endthinking] and then the true tokens) predicts truth[:, i].
    hidden = final_hidden(model, thought_ids)[:, t:]
    thought_policy_logp = thought_policy(_head_logits(model, hidden[:, :length]), think, temperature)
    thought_logp = thought_policy_logp.gather(-1, thoughts.reshape(rows * n, length, 1)).squeeze(-1).sum(-1)
    after_hidden = hidden[:, length + 1:].reshape(rows, n, m, -1)
    after_logits = _head_logits(model, after_hidden)
    mixed, weight = head(base_hidden.unsqueeze(1).expand_as(after_hidden), after_hidden,
                         base_logits.unsqueeze(1).expand_as(after_logits), after_logits)
    return ThoughtScores(
        logp_mixed=sequence_logprob(mixed, truth.unsqueeze(1).expand(rows, n, m)),
        logp_base=sequence_logprob(base_logits, truth),
        thought_logp=thought_logp.reshape(rows, n),
        mixing_weight=weight.squeeze(-1),
        mixed_logits=mixed,
        base_logits=base_logits,
    )


@dataclass
class EpisodeLoss:
    """One episode's loss and its parts (scalars; ``total`` carries the gradient)."""

    total: torch.Tensor  # nll + reinforce + kl_coefficient * kl
    nll: torch.Tensor  # mean per-token NLL of the true tokens under the mixed prediction
    reinforce: torch.Tensor  # REINFORCE term on the thoughts above the reward threshold
    kl: torch.Tensor  # KL(model || reference) of the base predictions
    metrics: dict[str, float]  # the rl/* values logged for this episode


def episode_loss(model: nn.Module, head: MixingHead, reference: nn.Module, batch: torch.Tensor,
                 positions: Sequence[int], thoughts: Sequence[torch.Tensor], think: ThinkIds, *, n_true: int,
                 temperature: float, kl_coefficient: float, reward_threshold: float) -> EpisodeLoss:
    """The Quiet-STaR loss of ``batch`` (B, S) with ``thoughts[i]`` (B, n, K) sampled after position ``positions[i]``.

    ``rl/reward`` is the mean gain in log-likelihood (nats over the n_true tokens) of the mixed prediction
    over the base one: the leave-one-out rewards themselves average to 0 by construction.
    """
    scores = [score_thoughts(model, head, batch[:, :p + 1], batch[:, p + 1:p + 1 + n_true], thought, think,
                             temperature) for p, thought in zip(positions, thoughts)]
    logp_mixed = torch.stack([s.logp_mixed for s in scores], dim=1)  # (B, P, n)
    logp_base = torch.stack([s.logp_base for s in scores], dim=1)  # (B, P)
    thought_logp = torch.stack([s.thought_logp for s in scores], dim=1)
    rewards = thought_rewards(logp_mixed.detach())
    reinforced = rewards > reward_threshold
    nll = -logp_mixed.mean() / n_true
    reinforce = reinforce_loss(torch.where(reinforced, rewards, torch.zeros_like(rewards)), thought_logp)
    with torch.no_grad():
        reference_hidden = final_hidden(reference, batch)
        index = torch.tensor([p + i for p in positions for i in range(n_true)], device=batch.device)
        reference_logits = _head_logits(reference, reference_hidden[:, index])
    base_logits = torch.cat([s.base_logits for s in scores], dim=1)  # (B, P*n_true, V), same order as index
    kl = token_kl_sum(base_logits, reference_logits) / base_logits[..., 0].numel()  # per position
    total = nll + reinforce + kl_coefficient * kl
    metrics = {"rl/loss": total.item(), "rl/nll": nll.item(), "rl/reinforce": reinforce.item(), "rl/kl": kl.item(),
               "rl/reward": (logp_mixed.detach() - logp_base.detach().unsqueeze(-1)).mean().item(),
               "rl/reinforced_fraction": reinforced.float().mean().item(),
               "rl/mixing_weight": torch.stack([s.mixing_weight for s in scores]).mean().item()}
    return EpisodeLoss(total, nll, reinforce, kl, metrics)


# ---------------------------------------------------------------- anti-theater checks

@dataclass(frozen=True)
class HeldOutItem:
    """A held-out context and the true tokens that follow it."""

    context: tuple[int, ...]  # token ids up to the position thoughts follow
    truth: tuple[int, ...]  # the next true tokens (at most n_true)


def heldout_check_items(tokenizer, heldout: Sequence[tuple[str, str]] | Sequence[str],
                        config: ThoughtRLConfig) -> list[HeldOutItem]:
    """The first ``check_items`` held-out texts as (context, next true tokens).

    A ``(prompt, answer)`` pair splits at the prompt's end; a plain text at a seeded position with at
    least one token on each side. Contexts keep their last ``seq_len`` tokens.
    """
    generator = torch.Generator().manual_seed(config.seed)
    items = []
    for entry in list(heldout)[:config.check_items]:
        if isinstance(entry, str):
            ids = tokenizer(entry, add_special_tokens=False)["input_ids"]
            if len(ids) < 2:
                raise ValueError(f"held-out text {entry!r} has {len(ids)} token(s); each needs at least 2")
            cut = int(torch.randint(1, len(ids), (1,), generator=generator))
            context, truth = ids[:cut], ids[cut:]
        else:
            prompt, answer = entry
            context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            truth = tokenizer(answer, add_special_tokens=False)["input_ids"]
            if not context or not truth:
                raise ValueError(f"held-out pair {entry!r} has an empty prompt or answer after tokenising")
        items.append(HeldOutItem(tuple(context[-config.seq_len:]), tuple(truth[:config.n_true])))
    if not items:
        raise ValueError("no held-out items: pass texts or (prompt, answer) pairs never used for training")
    return items


def thought_coherence(reference: nn.Module, context: torch.Tensor, thoughts: torch.Tensor,
                      think: ThinkIds) -> torch.Tensor:
    """Coherence of each thought: exp(mean token log-prob of the thought under the reference model) in (0, 1].

    ``context`` (1, t), ``thoughts`` (n, K) -> (n,). The reference is the Step 1 model, baked on
    well-formed reasoning traces, so this is the per-token probability that the baked model would write
    that thought after ``[thinking]``: high for thoughts in the learned reasoning form, low for drifted or
    degenerate token strings. Measured, and independent of the RL model's own (possibly drifted) view.
    """
    n, length = thoughts.shape
    start = torch.full((n, 1), think.start, dtype=thoughts.dtype, device=thoughts.device)
    ids = torch.cat([context.expand(n, -1), start, thoughts], dim=1)
    t = context.shape[1]
    logits = _head_logits(reference, final_hidden(reference, ids)[:, t:t + length])
    return sequence_logprob(logits, thoughts).div(length).exp()


@torch.no_grad()
def mean_coherence(model: nn.Module, reference: nn.Module, items: Sequence[HeldOutItem], think: ThinkIds,
                   config: ThoughtRLConfig, generator: torch.Generator) -> float:
    """Mean ``thought_coherence`` of ``num_thoughts`` thoughts sampled by ``model`` on each held-out item:
    the per-token probability the Step 1 ``reference`` gives them (the spec's final coherence, > 0.6)."""
    device = next(model.parameters()).device
    values = []
    for item in items:
        context = torch.tensor([item.context], device=device)
        thoughts = sample_thoughts(model, context.expand(config.num_thoughts, -1), think, config.thought_tokens,
                                   config.temperature, generator)
        values.append(thought_coherence(reference, context, thoughts, think))
    return torch.cat(values).mean().item()


@torch.no_grad()
def anti_theater_check(model: nn.Module, head: MixingHead, reference: nn.Module, items: Sequence[HeldOutItem],
                       think: ThinkIds, config: ThoughtRLConfig, generator: torch.Generator) -> AntiTheaterReport:
    """The three checks on held-out items; ``num_thoughts`` sampled thoughts per item, all measured.

    - divergence: each thought's tokens vs the model's greedy direct continuation of the same length
      from the same context (``thought_divergence``).
    - ablation: over (item, thought) pairs, top-1 correctness of the FIRST true token under the mixed
      prediction after that thought (with thoughts) vs under the base prediction (thoughts ablated).
    - correlation: Pearson r between each thought's ``thought_coherence`` and its leave-one-out reward
      r_j (log-likelihood of the item's true tokens under the mixed prediction vs its sibling thoughts),
      both relative to the thought's siblings: coherence minus the item's mean coherence, as r_j is
      relative by construction. Raw coherence would add between-item differences (some contexts make
      any thought likelier) that no reward can follow, diluting r.
    """
    n = config.num_thoughts
    device = next(model.parameters()).device
    thought_rows, direct_rows, with_thought, without, coherence, utility = [], [], [], [], [], []
    for item in items:
        context = torch.tensor([item.context], device=device)
        truth = torch.tensor([item.truth], device=device)
        thoughts = sample_thoughts(model, context.expand(n, -1), think, config.thought_tokens, config.temperature,
                                   generator)
        direct = greedy_continuation(model, context, config.thought_tokens)[0]
        scores = score_thoughts(model, head, context, truth, thoughts.unsqueeze(0), think, config.temperature)
        thought_rows.extend(thoughts.tolist())
        direct_rows.extend([direct.tolist()] * n)
        with_thought.append(scores.mixed_logits[0, :, 0].argmax(-1) == truth[0, 0])
        without.append((scores.base_logits[0, 0].argmax(-1) == truth[0, 0]).expand(n))
        item_coherence = thought_coherence(reference, context, thoughts, think)
        coherence.append(item_coherence - item_coherence.mean())
        utility.append(thought_rewards(scores.logp_mixed.unsqueeze(0)).flatten())
    return AntiTheaterReport(
        divergence=thought_divergence(thought_rows, direct_rows, config.divergence_threshold),
        ablation=ablation_drop(torch.cat(with_thought), torch.cat(without), config.ablation_threshold),
        correlation=coherence_utility_correlation(torch.cat(coherence), torch.cat(utility),
                                                  config.correlation_threshold))


# ---------------------------------------------------------------- the RL loop

def _generator(seed: int, rollbacks: int, episode: int, salt: int) -> torch.Generator:
    # A fresh generator per (rollback count, episode): a resumed run draws exactly what an uninterrupted
    # one draws, and the episodes redone after a rollback draw new batches and thoughts.
    return torch.Generator().manual_seed(((seed * 1_000_003 + rollbacks) * 1_000_003 + episode) * 4 + salt)


def _weights(model, head, optimizer, head_optimizer, episode: int) -> dict[str, Any]:
    """A deep copy of everything a rollback restores."""
    return copy.deepcopy({"model": model.state_dict(), "mixing_head": head.state_dict(),
                          "optimizer": optimizer.state_dict(), "head_optimizer": head_optimizer.state_dict(),
                          "episode": episode})


def _restore(weights: dict[str, Any], model, head, optimizer, head_optimizer) -> int:
    model.load_state_dict(weights["model"])
    head.load_state_dict(weights["mixing_head"])
    optimizer.load_state_dict(copy.deepcopy(weights["optimizer"]))
    head_optimizer.load_state_dict(copy.deepcopy(weights["head_optimizer"]))
    return weights["episode"]


def _comparable(config: ThoughtRLConfig) -> dict[str, Any]:
    # Everything but the episode budget must match for a checkpoint to be resumed.
    values = asdict(config)
    values.pop("episodes")
    return values


def _write_checkpoint(path: Path, weights: dict[str, Any], run: dict[str, Any], config: ThoughtRLConfig) -> None:
    buffer = io.BytesIO()
    torch.save({**weights, "run": run, "config": _comparable(config)}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _read_checkpoint(path: Path, config: ThoughtRLConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["config"] != _comparable(config):
        changed = sorted(k for k in state["config"] if state["config"][k] != _comparable(config).get(k))
        raise ValueError(f"{path} was written with other quietstar.rl settings ({', '.join(changed)}): resume "
                         "with the same settings (only episodes may change) or use a new checkpoint_dir")
    run = state.pop("run")
    state.pop("config")
    return state, run


def train_thoughts(model: nn.Module, tokenizer, train_texts: list[str],
                   heldout: list[tuple[str, str]] | list[str], config: ThoughtRLConfig, *,
                   reference: nn.Module | None = None, checkpoint_dir: Path | None = None,
                   log: Callable[[dict], None] | None = None) -> ThoughtRLReport:
    """Quiet-STaR Step 2 on ``model`` (which already has the thinking tokens), in place.

    ``reference``: the frozen Step 1 model for the KL term and coherence (default: a copy of ``model``
    as passed in). ``heldout`` is never trained on; its first ``check_items`` items feed the checks.
    With ``checkpoint_dir`` a killed run resumes from its last checkpoint (the model passed in must then
    be the Step 1 model again). The mixing head is trained with its own AdamW (adam_lr, betas and eps of
    ``config.optimizer``, no weight decay: decay would pull its output layer toward w = 0.5).
    """
    think = ThinkIds.of(tokenizer)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token to separate packed training texts; set one")
    device = next(model.parameters()).device
    blocks = pack_token_ids((tokenizer(text, add_special_tokens=False)["input_ids"] for text in train_texts),
                            config.seq_len, tokenizer.eos_token_id).to(device)
    if len(blocks) == 0:
        raise ValueError(f"train_texts give fewer tokens than one seq_len={config.seq_len} block: give more "
                         "text or lower quietstar.rl.seq_len")
    items = heldout_check_items(tokenizer, heldout, config)
    started = time.time()
    was_training = model.training
    model.eval()  # no dropout: the policy that samples a thought is the one REINFORCE differentiates
    reference = copy.deepcopy(model) if reference is None else reference
    reference.eval().requires_grad_(False)
    hidden_size = model.get_output_embeddings().weight.shape[1]
    with torch.random.fork_rng(devices=[]):  # the head's first layer is drawn from config.seed, not from whatever
        torch.manual_seed(config.seed)          # the process did before (two same-seed runs differed there)
        head = MixingHead(hidden_size, init_weight=config.mixing_init_weight)
    optimizer = build_muon_grokfast(model, config.optimizer)
    opt = config.optimizer
    head_optimizer = torch.optim.AdamW(head.parameters(), lr=opt.adam_lr, betas=tuple(opt.adam_betas),
                                       eps=opt.adam_eps, weight_decay=0.0)
    run: dict[str, Any] = {"optimizer_steps": 0, "kl_coefficient": config.kl_coefficient,
                           "reward_threshold": config.reward_threshold, "history": [], "checks": [],
                           "rollbacks": []}
    checkpoint = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT
    if checkpoint is not None and checkpoint.is_file():
        passing, run = _read_checkpoint(checkpoint, config)
        episode = _restore(passing, model, head, optimizer, head_optimizer)
    else:
        episode = 0
        passing = _weights(model, head, optimizer, head_optimizer, episode)  # the rollback target until a pass
        if checkpoint is not None:
            _write_checkpoint(checkpoint, passing, run, config)
    emit = log or (lambda metrics: None)
    parameters = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    stopped_reason = "completed"
    while True:
        if run["rollbacks"] and len(run["rollbacks"]) >= config.max_rollbacks:
            stopped_reason = "max_rollbacks"
            break
        if episode >= config.episodes:
            break
        rollbacks = len(run["rollbacks"])
        sampler = _generator(config.seed, rollbacks, episode, 0)
        batch = blocks[torch.randint(len(blocks), (config.batch_size,), generator=sampler).to(device)]
        positions = sorted(torch.randperm(config.seq_len - config.n_true, generator=sampler)
                           [:config.positions_per_sequence].tolist())
        thoughts = [sample_thoughts(model, batch[:, :p + 1].repeat_interleave(config.num_thoughts, dim=0), think,
                                    config.thought_tokens, config.temperature, sampler)
                    .view(config.batch_size, config.num_thoughts, config.thought_tokens) for p in positions]
        loss = episode_loss(model, head, reference, batch, positions, thoughts, think, n_true=config.n_true,
                            temperature=config.temperature, kl_coefficient=run["kl_coefficient"],
                            reward_threshold=run["reward_threshold"])
        if not math.isfinite(loss.total.item()):
            raise FloatingPointError(f"Quiet-STaR loss is {loss.total.item()} at episode {episode + 1} "
                                     f"({loss.metrics}); lower quietstar.rl.optimizer learning rates")
        optimizer.zero_grad(set_to_none=True)
        head_optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
        optimizer.step()
        head_optimizer.step()
        episode += 1
        run["optimizer_steps"] += 1
        row = {"rl/episode": episode, **loss.metrics}
        run["history"].append(row)
        emit(row)
        if episode % config.check_every and episode != config.episodes:
            continue
        report = anti_theater_check(model, head, reference, items, think, config,
                                    _generator(config.seed, rollbacks, episode, 1))
        values = {"divergence": report.divergence.value, "ablation": report.ablation.value,
                  "correlation": report.correlation.value}
        run["checks"].append({"episode": episode, **values, "passed": report.all_passed,
                              "details": {r.name: r.detail for r in (report.divergence, report.ablation,
                                                                     report.correlation)}})
        emit({"rl/episode": episode, **report.metrics(), "anti_theater/passed": float(report.all_passed)})
        if report.all_passed:
            passing = _weights(model, head, optimizer, head_optimizer, episode)
        else:
            failed_episode = episode
            episode = _restore(passing, model, head, optimizer, head_optimizer)
            raised = run["reward_threshold"] * 1.5 if run["reward_threshold"] > 0 else FIRST_RAISED_THRESHOLD
            run["kl_coefficient"] *= 2.0
            run["reward_threshold"] = raised
            run["rollbacks"].append({"episode": failed_episode, "restored_episode": episode, **values,
                                     "kl_coefficient": run["kl_coefficient"],
                                     "reward_threshold": run["reward_threshold"]})
            emit({"rl/episode": failed_episode, "anti_theater/rollbacks": float(len(run["rollbacks"])),
                  "rl/kl_coefficient": run["kl_coefficient"], "rl/reward_threshold": run["reward_threshold"]})
        if checkpoint is not None:
            # After a rollback too: the weights are the last passing ones, with the raised coefficients.
            _write_checkpoint(checkpoint, passing, run, config)
    model.train(was_training)
    return ThoughtRLReport(episodes=episode, optimizer_steps=run["optimizer_steps"], history=run["history"],
                           checks=run["checks"], rollbacks=run["rollbacks"], kl_coefficient=run["kl_coefficient"],
                           reward_threshold=run["reward_threshold"], stopped_reason=stopped_reason,
                           wall_time_s=time.time() - started, mixing_head=head)
