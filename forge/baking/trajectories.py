"""Inputs, and trajectories sampled from the prompted teacher.

A trajectory is one input ``x`` and a continuation ``y`` sampled from ``P_teacher(. | prompt, x)``.
The teacher reads ``prompt + x + y``, the student reads ``x + y``; only the positions that predict
``y`` enter the KL. Sequences are right-padded and no attention mask is passed: in a causal model a
position never sees the padding after it, so the positions that count are exact for any architecture
(the Cognate model included) and nothing depends on how a model handles masks.
"""
from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from forge.baking.config import BakingConfig
from forge.decoding import IncrementalDecoder, sample_next
from forge.modelinfo import max_positions

SAMPLE_BATCH_ROWS = 64  # sampled sequences decoded together (inputs of one prompted length, their samples)

# Fields tried, in order, when a JSON/JSONL record is given without --input-field.
INPUT_FIELDS = ("question", "problem", "prompt", "input", "text", "query", "goal", "ctx")


def load_inputs(path: str | Path, *, field: str | None = None, limit: int | None = None) -> list[str]:
    """Read inputs from ``.txt`` (one per line), ``.jsonl``/``.jsonl.gz`` or ``.json`` (a list)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"inputs file {path} does not exist; pass a .txt, .jsonl or .json file")
    name = path.name.lower()
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        if name.endswith((".jsonl", ".jsonl.gz")):
            records = [json.loads(line) for line in handle if line.strip()]
        elif name.endswith((".json", ".json.gz")):
            records = json.load(handle)
            if not isinstance(records, list):
                raise ValueError(f"{path}: a .json inputs file must hold a list of strings or records")
        else:
            records = [line.rstrip("\n") for line in handle if line.strip()]
    inputs = [_record_text(record, field, path) for record in records]
    inputs = [text for text in inputs if text.strip()]
    if not inputs:
        raise ValueError(f"{path} holds no non-empty inputs")
    return inputs[:limit] if limit else inputs


def _record_text(record, field: str | None, path: Path) -> str:
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        raise ValueError(f"{path}: each record must be a string or an object, got {type(record).__name__}")
    if field is not None:
        if field not in record:
            raise ValueError(f"{path}: a record has no field {field!r} (it has {', '.join(record)})")
        return str(record[field])
    for candidate in INPUT_FIELDS:
        if candidate in record:
            return str(record[candidate])
    raise ValueError(
        f"{path}: no input field found among {', '.join(INPUT_FIELDS)} (record has {', '.join(record)}); "
        "name it with field=... / --input-field"
    )


def split_inputs(inputs: Sequence[str], heldout_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Shuffle with ``seed`` and split into (train, held-out); each side gets at least one input."""
    if len(inputs) < 2:
        raise ValueError(
            f"need at least 2 inputs to keep some held out for measuring strength, got {len(inputs)}"
        )
    order = list(inputs)
    random.Random(seed).shuffle(order)
    n_heldout = min(len(order) - 1, max(1, round(len(order) * heldout_fraction)))
    return order[n_heldout:], order[:n_heldout]


@dataclass(frozen=True)
class Trajectory:
    """One sampled continuation and the two contexts it is scored in."""

    teacher_context: tuple[int, ...]  # prompt + input token ids
    student_context: tuple[int, ...]  # input token ids alone (the prompt is what gets baked in)
    generated: tuple[int, ...]  # token ids sampled from the prompted teacher


@dataclass
class TrajectoryBatch:
    """Right-padded teacher and student sequences and the positions that predict generated tokens."""

    teacher_ids: torch.Tensor  # (B, Tt) prompt + input + generated
    teacher_mask: torch.Tensor  # (B, Tt) bool: positions whose next token is a generated one
    student_ids: torch.Tensor  # (B, Ts) input + generated
    student_mask: torch.Tensor  # (B, Ts) bool, same count and order of True as teacher_mask
    num_tokens: int  # generated tokens in the batch
    trajectories: tuple[Trajectory, ...]  # the rows, in order


def collate(trajectories: Sequence[Trajectory], pad_id: int, device: torch.device) -> TrajectoryBatch:
    """Build a :class:`TrajectoryBatch`; row-major order of the masks pairs teacher and student positions."""
    teacher_ids, teacher_mask = _pad([t.teacher_context for t in trajectories], trajectories, pad_id)
    student_ids, student_mask = _pad([t.student_context for t in trajectories], trajectories, pad_id)
    return TrajectoryBatch(
        teacher_ids=teacher_ids.to(device), teacher_mask=teacher_mask.to(device),
        student_ids=student_ids.to(device), student_mask=student_mask.to(device),
        num_tokens=int(student_mask.sum()), trajectories=tuple(trajectories),
    )


def _pad(contexts, trajectories, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    # The last generated token is never an input: nothing after it is scored.
    rows = [list(ctx) + list(t.generated[:-1]) for ctx, t in zip(contexts, trajectories)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (row, ctx, t) in enumerate(zip(rows, contexts, trajectories)):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, len(ctx) - 1 : len(ctx) - 1 + len(t.generated)] = True
    return ids, mask


def encode_contexts(tokenizer, prompt: str, text: str) -> tuple[list[int], list[int]]:
    """Token ids of (prompt + input, input) with the tokenizer's own leading special tokens (e.g. BOS).

    An empty input gives the student a single start token (BOS, else EOS), since a causal LM needs
    at least one token to predict from.
    """
    prefix = tokenizer("", add_special_tokens=True)["input_ids"]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    input_ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
    if not prompt_ids:
        raise ValueError("the prompt is empty after tokenization; give a non-empty prompt to bake")
    student = list(prefix) + list(input_ids)
    if not student:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise ValueError("empty inputs need a BOS or EOS token in the tokenizer; pass non-empty inputs")
        student = [start]
    return list(prefix) + list(prompt_ids) + list(input_ids), student


@torch.no_grad()
def sample_trajectories(model: nn.Module, tokenizer, prompt: str, inputs: Sequence[str],
                        config: BakingConfig, generator: torch.Generator) -> list[Trajectory]:
    """Sample ``config.samples_per_input`` continuations per input from ``model`` given the prompt.

    Token-by-token sampling that continues the model's KV cache (``forge.decoding``; a model without
    one recomputes the prefix). Inputs whose prompted contexts have the same length share a batch (up to
    ``SAMPLE_BATCH_ROWS`` rows), so nothing is padded: one input at a time, sampling the bakes of Phase 5
    (six prompts, 48 inputs) was most of their time. Trajectories come back in input order.
    """
    device = next(model.parameters()).device
    limit = max_positions(model)
    eos = tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    contexts = [encode_contexts(tokenizer, prompt, text) for text in inputs]
    for teacher_ctx, _ in contexts:
        if limit is not None and len(teacher_ctx) + config.max_new_tokens > limit:
            raise ValueError(
                f"prompt + input ({len(teacher_ctx)} tokens) + max_new_tokens ({config.max_new_tokens}) exceeds "
                f"the model's {limit} positions; shorten the prompt/input or lower max_new_tokens"
            )
    by_length: dict[int, list[int]] = {}
    for index, (teacher_ctx, _) in enumerate(contexts):
        by_length.setdefault(len(teacher_ctx), []).append(index)
    per_batch = max(1, SAMPLE_BATCH_ROWS // config.samples_per_input)
    sampled: dict[int, list[Trajectory]] = {}
    for length in sorted(by_length):
        members = by_length[length]
        for start in range(0, len(members), per_batch):
            group = members[start:start + per_batch]
            ids = torch.tensor([contexts[i][0] for i in group for _ in range(config.samples_per_input)],
                               dtype=torch.long, device=device)
            decoder = IncrementalDecoder(model, ids)
            finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
            for _ in range(config.max_new_tokens):
                token = sample_next(decoder.logits(), config.temperature, generator)
                decoder.append(token)
                if eos is not None:
                    finished |= token == eos
                    if bool(finished.all()):
                        break
            rows = decoder.sequence[:, length:].tolist()
            for k, index in enumerate(group):
                teacher_ctx, student_ctx = contexts[index]
                sampled[index] = []
                for row in rows[k * config.samples_per_input:(k + 1) * config.samples_per_input]:
                    if eos is not None and eos in row:
                        row = row[: row.index(eos) + 1]  # EOS is part of the behaviour; what follows it is not
                    sampled[index].append(Trajectory(tuple(teacher_ctx), tuple(student_ctx), tuple(row)))
    model.train(was_training)
    return [trajectory for index in range(len(contexts)) for trajectory in sampled[index]]
