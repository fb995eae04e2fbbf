"""KL(teacher || student) over generated tokens, computed in chunks of the vocabulary projection.

Full-vocabulary float32 logits on both sides dominate memory (50257 x 4 bytes per token and side),
so neither side materialises them for the whole batch: the models yield the hidden states their LM
head reads (cheap, see ``hidden``), and the head is applied ``chunk`` tokens at a time. In training the student's chunk
losses are back-propagated into a detached copy of its hidden states, whose gradient is then sent
through the network once, so at most one chunk of logits (and its graph) is alive at a time.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, NamedTuple

import torch
from torch import nn

from forge.baking.hidden import final_hidden
from forge.baking.trajectories import Trajectory, TrajectoryBatch


class ModelView(NamedTuple):
    """A model to run, the context that selects how it runs (e.g. a PEFT model's disable_adapter()) and, for a
    view that cannot change while it is used (a bake's teacher), its hidden states per trajectory: computed
    once, then reused by every epoch and every strength measurement instead of running the model again."""

    model: nn.Module
    context: Callable[[], ContextManager]
    states: dict[Trajectory, torch.Tensor] | None = None


def plain(model: nn.Module) -> ModelView:
    """Run ``model`` as it is."""
    return ModelView(model, contextlib.nullcontext)


def fixed(view: ModelView) -> ModelView:
    """``view``, keeping its hidden states per trajectory: only for a model whose weights stay as they are."""
    return ModelView(view.model, view.context, {})


@torch.no_grad()
def check_head(view: ModelView, ids: torch.Tensor) -> None:
    """Refuse models whose logits are not their LM head applied to the head's input (e.g. soft-capping)."""
    model = view.model
    with view.context():
        logits = model(input_ids=ids, use_cache=False).logits.float()
        rebuilt = model.get_output_embeddings()(final_hidden(model, ids)).float()
    if not torch.allclose(logits, rebuilt, atol=1e-4, rtol=1e-3):
        raise ValueError(
            f"{type(model).__name__}: get_output_embeddings() applied to its own input does not reproduce the "
            "logits (soft-capping or scaling after the head?); the chunked KL cannot be used with this model"
        )


def token_kl_sum(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Sum over tokens of KL(softmax(teacher) || softmax(student)), in float32."""
    t_logp = torch.log_softmax(teacher_logits.float(), dim=-1)
    s_logp = torch.log_softmax(student_logits.float(), dim=-1)
    return (t_logp.exp() * (t_logp - s_logp)).sum()


@torch.no_grad()
def teacher_states(teacher: ModelView, batch: TrajectoryBatch) -> torch.Tensor:
    """Teacher hidden states at the scored positions, (N, H); from ``teacher.states`` where it holds them."""
    known = teacher.states
    if known is not None and all(t in known for t in batch.trajectories):
        return torch.cat([known[t] for t in batch.trajectories])
    with teacher.context():
        hidden = final_hidden(teacher.model, batch.teacher_ids)
    if known is not None:
        for row, trajectory in enumerate(batch.trajectories):
            known[trajectory] = hidden[row][batch.teacher_mask[row]]
    return hidden[batch.teacher_mask]


@torch.no_grad()
def batch_kl_sum(teacher: ModelView, student: ModelView, batch: TrajectoryBatch, chunk: int) -> float:
    """Summed token KL(teacher || student) over the generated tokens of ``batch`` (no gradient)."""
    t_hidden = teacher_states(teacher, batch)
    with student.context():
        s_hidden = final_hidden(student.model, batch.student_ids)[batch.student_mask]
    total = 0.0
    for start in range(0, t_hidden.shape[0], chunk):
        with teacher.context():
            t_logits = teacher.model.get_output_embeddings()(t_hidden[start:start + chunk])
        with student.context():
            s_logits = student.model.get_output_embeddings()(s_hidden[start:start + chunk])
        total += float(token_kl_sum(t_logits, s_logits))
    return total


def kl_backward(teacher: ModelView, student: nn.Module, batch: TrajectoryBatch, chunk: int,
                weight: float = 1.0) -> float:
    """Back-propagate ``weight`` times the mean token KL(teacher || student) of ``batch``; return the mean KL."""
    t_hidden = teacher_states(teacher, batch)
    if batch.num_tokens != t_hidden.shape[0]:
        raise RuntimeError(f"teacher scores {t_hidden.shape[0]} tokens but student {batch.num_tokens}")

    def chunk_kl(start: int, stop: int, s_logits: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), teacher.context():
            t_logits = teacher.model.get_output_embeddings()(t_hidden[start:stop])
        return token_kl_sum(t_logits, s_logits)

    return _head_loss_backward(student, batch, chunk, weight, chunk_kl)


def reference_ce_backward(student: nn.Module, batch: TrajectoryBatch, chunk: int, weight: float = 1.0) -> float:
    """Back-propagate ``weight`` times the student's mean token cross-entropy on the generated tokens of ``batch``
    (its rows' own continuations, e.g. reference answers); return the mean cross-entropy."""
    targets = torch.tensor([token for t in batch.trajectories for token in t.generated],
                           device=batch.student_ids.device)

    def chunk_ce(start: int, stop: int, s_logits: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(s_logits.float(), targets[start:stop], reduction="sum")

    return _head_loss_backward(student, batch, chunk, weight, chunk_ce)


def _head_loss_backward(student: nn.Module, batch: TrajectoryBatch, chunk: int, weight: float,
                        chunk_loss: Callable[[int, int, torch.Tensor], torch.Tensor]) -> float:
    """Back-propagate ``weight`` times the summed ``chunk_loss(start, stop, student logits of those positions)`` over
    the scored positions, divided by their count; return that mean. The head runs ``chunk`` positions at a time on a
    detached copy of the hidden states, whose gradient then goes through the network once."""
    s_hidden = final_hidden(student, batch.student_ids)[batch.student_mask]
    detached = s_hidden.detach().requires_grad_(True)
    head = student.get_output_embeddings()
    total = 0.0
    for start in range(0, detached.shape[0], chunk):
        stop = min(start + chunk, detached.shape[0])
        loss = chunk_loss(start, stop, head(detached[start:stop])) / batch.num_tokens
        (loss * weight).backward()
        total += loss.item()
    s_hidden.backward(detached.grad)
    return total
