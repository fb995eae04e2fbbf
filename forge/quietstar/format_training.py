"""Quiet-STaR Step 1: bake the reasoning format into the model by full fine-tuning.

The model learns ``Question: ...`` -> ``[thinking] <strategy> ... [/endthinking]`` -> ``Answer: ...``
from reasoning examples with MuonGrokfast (spec: lr 1e-4, Grokfast lambda 0.2, QK-clip 30, 5 epochs).
The loss is next-token cross-entropy on the thinking block, the answer and the closing end-of-text
token; question tokens and padding are masked. Direct-answer pairs (a prompt and the answer it asks for,
no thinking block) can be mixed into the training examples, with the loss on the answer, so the model keeps
a direct-answer mode for when its thinking tokens are suppressed. With replay on, every step also takes a
language-modelling loss on a batch of pretraining text, so the model keeps its text modelling (trained on
format traces alone, a tiny model's held-out perplexity rose from 272 to 4,900 at lr 1e-3). After the last
epoch the spec's convergence check runs: below the accuracy threshold, both learning rates are halved and a
few more epochs follow, once. A miss is recorded in the report, never raised: the phase decides what to do with it.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from forge.artifacts import atomic_write_bytes
from forge.criteria import is_met
from forge.data.replay import Replay
from forge.devices import model_device
from forge.modelinfo import pad_token_id
from forge.optim import MuonGrokfastConfig, build_muon_grokfast
from forge.quietstar.data import ReasoningExample
from forge.quietstar.tokens import STRATEGY_TOKENS, THINK_END, thinking_token_ids, token_words

CHECKPOINT = "format_bake.pt"
NO_STRATEGY = -1  # strategy index of a token outside every strategy line


@dataclass
class FormatBakeConfig:
    """Step 1 (prompt baking) settings; defaults are the spec's."""

    epochs: int = 5  # fine-tuning epochs over the training examples (spec: 5)
    optimizer: MuonGrokfastConfig = field(default_factory=lambda: MuonGrokfastConfig(
        muon_lr=1e-4, adam_lr=1e-4, grokfast_lambda=0.2, qk_clip_threshold=30.0))  # spec's baking optimizer
    batch_size: int = 8  # examples per optimizer step
    seq_len: int = 256  # tokens per example; longer ones are cut at the end (counted in the report)
    val_fraction: float = 0.1  # share of examples held out for accuracy (spec: test_size=0.1)
    max_examples: int | None = None  # select_examples keeps the first this many (train + val); None: all
    accuracy_threshold: float = 0.85  # convergence check: validation accuracy needed after the epochs (spec)
    mitigation_epochs: int = 3  # extra epochs when the threshold is missed (spec: 3)
    mitigation_lr_factor: float = 0.5  # both learning rates are multiplied by this for the extra epochs (spec)
    seed: int = 0  # shuffling of examples into batches
    replay_sequences: int = 0  # pretraining sequences (seq_len tokens) replayed in every step; 0: off (spec)
    replay_weight: float = 1.0  # weight of the replay's language-modelling loss beside the format loss

    def __post_init__(self) -> None:
        if isinstance(self.optimizer, dict):
            self.optimizer = MuonGrokfastConfig(**self.optimizer)
        if self.epochs < 1 or self.batch_size < 1 or self.mitigation_epochs < 0:
            raise ValueError("format bake needs epochs >= 1, batch_size >= 1 and mitigation_epochs >= 0, got "
                             f"{self.epochs}, {self.batch_size}, {self.mitigation_epochs}")
        if self.seq_len < 8:
            raise ValueError(f"seq_len={self.seq_len} cannot hold a question and a thinking block; use e.g. 256")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}; the spec uses 0.1")
        if self.max_examples is not None and self.max_examples < 2:
            raise ValueError(f"max_examples={self.max_examples} leaves no room for both a training and a "
                             "validation example; use None or at least a few dozen")
        if not 0.0 < self.mitigation_lr_factor <= 1.0:
            raise ValueError(f"mitigation_lr_factor must be in (0, 1], got {self.mitigation_lr_factor}")
        if self.replay_sequences < 0 or self.replay_weight < 0:
            raise ValueError(f"replay_sequences and replay_weight must be >= 0, got {self.replay_sequences}, "
                             f"{self.replay_weight}")


@dataclass
class FormatBakeReport:
    """What Step 1 did and measured."""

    initial_accuracy: float  # validation format accuracy before any training
    final_accuracy: float  # validation format accuracy at the end
    final_per_strategy: dict[str, float | None]  # per-strategy accuracy at the end (None: no tokens)
    accuracy_before_mitigation: float  # accuracy after the planned epochs, the spec's convergence check
    accuracy_after_mitigation: float | None  # accuracy after the extra epochs; None when they did not run
    mitigated: bool  # whether the threshold was missed and the extra low-LR epochs ran
    converged: bool  # final_accuracy >= threshold
    threshold: float  # the accuracy the convergence check asks for
    epochs_run: int  # epochs trained in total, mitigation included
    history: list[dict[str, Any]]  # per epoch: epoch, stage, lr_factor, loss, val_accuracy, per_strategy
    train_examples: int  # examples trained on
    direct_examples: int  # direct-answer pairs trained on beside them (0: none)
    val_examples: int  # held-out examples accuracy is measured on
    truncated_examples: int  # examples (train + validation) longer than seq_len, cut at the end
    train_target_tokens: int  # loss-bearing tokens per training epoch
    replay_tokens: int  # pretraining-text tokens available for replay (0: replay off)
    val_target_tokens: int  # tokens the validation accuracy is computed over
    wall_time_s: float  # seconds spent training and evaluating, summed over resumed calls
    resumed_from_epoch: int  # epochs already finished in checkpoint_dir when this call started (0: fresh)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- encoding

@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one example with what each position is scored for."""

    input_ids: list[int]  # the tokenised text (plus end-of-text), at most seq_len long
    target: list[bool]  # True for thinking-block and answer tokens (the ones the loss and accuracy use)
    strategy: list[int]  # index into STRATEGY_TOKENS of the strategy line a token lies in, else NO_STRATEGY
    truncated: bool  # the full text was longer than seq_len


def _strategy_spans(example: ReasoningExample, offset: int) -> list[tuple[int, int, int]]:
    """(start, end, strategy index) character spans in ``example.text()``: from a strategy token to the
    next strategy token or ``[/endthinking]``."""
    thinking = example.thinking
    marks = []
    for index, token in enumerate(STRATEGY_TOKENS):
        start = thinking.find(token)
        while start >= 0:
            marks.append((start, index))
            start = thinking.find(token, start + len(token))
    marks.sort()
    close = thinking.rfind(THINK_END)
    close = len(thinking) if close < 0 else close
    spans = []
    for number, (start, index) in enumerate(marks):
        end = marks[number + 1][0] if number + 1 < len(marks) else close
        spans.append((offset + start, offset + min(end, close), index))
    return spans


def encode_example(tokenizer, example: ReasoningExample, seq_len: int) -> EncodedExample:
    """Tokenise ``example.text()`` plus end-of-text; mark the thinking/answer tokens and their strategy lines."""
    text = example.text()
    thinking_start = text.index(example.thinking, len("Question: ") + len(example.question))
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    starts = [start for start, _ in encoding["offset_mapping"]]
    target = [start >= thinking_start for start in starts]
    spans = _strategy_spans(example, thinking_start)
    strategy = [next((index for lo, hi, index in spans if lo <= start < hi), NO_STRATEGY) for start in starts]
    if tokenizer.eos_token_id is not None:  # the model learns to stop after the answer
        ids.append(tokenizer.eos_token_id)
        target.append(True)
        strategy.append(NO_STRATEGY)
    truncated = len(ids) > seq_len
    return EncodedExample(ids[:seq_len], target[:seq_len], strategy[:seq_len], truncated)


def encode_direct(tokenizer, prompt: str, target: str, seq_len: int) -> EncodedExample:
    """Tokenise ``prompt + target`` plus end-of-text; the target's tokens and the end-of-text are scored."""
    encoding = tokenizer(prompt + target, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    scored = [start >= len(prompt) for start, _ in encoding["offset_mapping"]]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
        scored.append(True)
    truncated = len(ids) > seq_len
    return EncodedExample(ids[:seq_len], scored[:seq_len], [NO_STRATEGY] * min(len(ids), seq_len), truncated)


def collate(batch: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask``, ``labels`` (-100 off target) and ``strategy``."""
    width = max(len(item.input_ids) for item in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    strategy = torch.full((len(batch), width), NO_STRATEGY, dtype=torch.long)
    for row, item in enumerate(batch):
        n = len(item.input_ids)
        ids = torch.tensor(item.input_ids)
        input_ids[row, :n] = ids
        attention[row, :n] = 1
        labels[row, :n] = torch.where(torch.tensor(item.target), ids, torch.tensor(-100))
        strategy[row, :n] = torch.tensor(item.strategy)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "strategy": strategy}


# ---------------------------------------------------------------- split and accuracy

def _id_rank(example_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}/{example_id}".encode("utf-8")).hexdigest()


def split_examples(examples: Sequence[ReasoningExample], val_fraction: float,
                   seed: int) -> tuple[list[ReasoningExample], list[ReasoningExample]]:
    """``(train, val)``: the ``val_fraction`` of examples with the smallest hash of (seed, id) go to
    validation, so an example's side depends only on its id, not on the order or the other examples'
    positions. Ids must be unique; both sides get at least one example."""
    examples = list(examples)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}; the spec uses 0.1")
    if len(examples) < 2:
        raise ValueError(f"{len(examples)} reasoning example(s) cannot be split into training and validation; "
                         "generate more (forge.quietstar.offline)")
    ids = [example.id for example in examples]
    if len(set(ids)) != len(ids):
        raise ValueError("reasoning example ids must be unique to split them stably; run validate_examples")
    n_val = min(len(examples) - 1, max(1, round(len(examples) * val_fraction)))
    ranked = sorted(examples, key=lambda example: _id_rank(example.id, seed))
    val_ids = {example.id for example in ranked[:n_val]}
    return ([example for example in examples if example.id not in val_ids],
            [example for example in examples if example.id in val_ids])


@torch.no_grad()
def _accuracy_of_encoded(model, encoded: Sequence[EncodedExample], pad_id: int, batch_size: int) -> dict[str, Any]:
    if not encoded:
        raise ValueError("no validation examples to measure format accuracy on")
    device = model_device(model)
    was_training = model.training
    model.eval()
    n_strategies = len(STRATEGY_TOKENS)
    correct = torch.zeros(n_strategies + 1, dtype=torch.long)  # last slot: tokens outside strategy lines
    total = torch.zeros(n_strategies + 1, dtype=torch.long)
    try:
        for start in range(0, len(encoded), batch_size):
            batch = collate(encoded[start:start + batch_size], pad_id)
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits
            predicted = logits[:, :-1].argmax(-1).cpu()
            targets = batch["labels"][:, 1:]
            scored = targets != -100
            hits = (predicted == targets) & scored
            slot = batch["strategy"][:, 1:].clone()
            slot[slot == NO_STRATEGY] = n_strategies
            correct += torch.bincount(slot[hits], minlength=n_strategies + 1)
            total += torch.bincount(slot[scored], minlength=n_strategies + 1)
    finally:
        model.train(was_training)
    tokens = int(total.sum())
    if tokens == 0:
        raise ValueError("the validation examples have no thinking/answer tokens within seq_len: raise seq_len")
    per_strategy = {token: (float(correct[i]) / int(total[i]) if int(total[i]) else None)
                    for i, token in enumerate(STRATEGY_TOKENS)}
    return {"accuracy": float(correct.sum()) / tokens, "per_strategy": per_strategy, "tokens": tokens}


def format_accuracy(model, tokenizer, examples: Sequence[ReasoningExample], *, seq_len: int,
                    batch_size: int) -> dict[str, Any]:
    """Teacher-forced top-1 next-token accuracy over the tokens of the thinking block and the answer of
    held-out examples; per strategy: the same over the tokens of the lines that each strategy token opens
    (from the strategy token to the next strategy token or ``[/endthinking]``). None when a strategy has no
    tokens in the validation set.

    Returns ``{"accuracy", "per_strategy": {strategy token: accuracy or None, all 10}, "tokens"}``; the
    answer includes the closing end-of-text token.
    """
    thinking_token_ids(tokenizer)
    encoded = [encode_example(tokenizer, example, seq_len) for example in examples]
    return _accuracy_of_encoded(model, encoded, pad_token_id(tokenizer), batch_size)


def select_examples(examples: Sequence[ReasoningExample],
                    config: FormatBakeConfig) -> tuple[list[ReasoningExample], list[ReasoningExample]]:
    """The first ``config.max_examples`` examples (all when None), split by :func:`split_examples`."""
    examples = list(examples)
    if config.max_examples is not None:
        examples = examples[:config.max_examples]
    return split_examples(examples, config.val_fraction, config.seed)


# ---------------------------------------------------------------- training

def _batch_loss(model, batch: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over the batch's target tokens, and their count."""
    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
    targets = batch["labels"][:, 1:].to(device)
    total = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                            ignore_index=-100, reduction="sum")
    count = int((targets != -100).sum())
    return total / max(count, 1), count


def _train_epoch(model, optimizer, encoded: Sequence[EncodedExample], pad_id: int, config: FormatBakeConfig,
                 order_seed: int, replay: Replay | None, first_step: int) -> tuple[float, float | None]:
    """One pass over ``encoded`` in a seeded order, each step with its blocks of ``replay`` (steps numbered from
    ``first_step`` across epochs). Token-weighted mean format loss and mean replay loss."""
    device = model_device(model)
    model.train()
    order = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(order_seed)).tolist()
    loss_sum, tokens, replay_sum, replay_steps = 0.0, 0, 0.0, 0
    for step, start in enumerate(range(0, len(order), config.batch_size)):
        batch = collate([encoded[i] for i in order[start:start + config.batch_size]], pad_id)
        loss, count = _batch_loss(model, batch, device)
        if count == 0:
            continue  # every target token was cut off by seq_len: nothing to learn from this batch
        total = loss
        if replay is not None:
            replay_loss = replay.loss(model, first_step + step)
            total = loss + config.replay_weight * replay_loss
            replay_sum += replay_loss.item()
            replay_steps += 1
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        loss_sum += loss.item() * count
        tokens += count
    optimizer.zero_grad(set_to_none=True)
    if tokens == 0:
        raise ValueError("no training example has thinking/answer tokens within seq_len: raise seq_len")
    return loss_sum / tokens, (replay_sum / replay_steps if replay_steps else None)


def _fingerprint(train: Sequence[ReasoningExample], val: Sequence[ReasoningExample], config: FormatBakeConfig,
                 replay: Replay | None, direct: Sequence[tuple[str, str]] = ()) -> str:
    """What a resumed bake must share with the one that wrote the checkpoint (data and training settings)."""
    settings = {"train": [e.id for e in train], "val": [e.id for e in val], "seq_len": config.seq_len,
                "batch_size": config.batch_size, "seed": config.seed, "optimizer": asdict(config.optimizer),
                "mitigation_lr_factor": config.mitigation_lr_factor}
    if replay is not None:
        settings["replay"] = {"sequences": config.replay_sequences, "weight": config.replay_weight,
                              "blocks": replay.digest()}
    if direct:
        settings["direct"] = [list(pair) for pair in direct]
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _save_checkpoint(path: Path, model, optimizer, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                "torch_rng": torch.get_rng_state()}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load_checkpoint(path: Path, model, optimizer, fingerprint: str, config: FormatBakeConfig) -> dict[str, Any]:
    saved = torch.load(path, map_location="cpu", weights_only=False)
    state = saved["state"]
    if state["fingerprint"] != fingerprint:
        raise ValueError(f"{path} belongs to a format bake of other examples or settings (seq_len, batch_size, "
                         "seed, optimizer): pass a fresh checkpoint_dir or delete the file to start over")
    if state["mitigating"] and state["base_epochs"] != config.epochs:
        raise ValueError(f"{path} already began its mitigation epochs after {state['base_epochs']} epochs; resume "
                         f"it with epochs={state['base_epochs']} or use a fresh checkpoint_dir")
    if not state["mitigating"] and state["epochs_done"] > config.epochs:
        raise ValueError(f"{path} holds {state['epochs_done']} finished epochs, more than epochs={config.epochs}: "
                         "raise epochs or use a fresh checkpoint_dir")
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["torch_rng"])
    return state


def _log_record(entry: dict[str, Any]) -> dict[str, Any]:
    record = {"baking/epoch": entry["epoch"], "baking/loss": entry["loss"],
              "baking/val_accuracy": entry["val_accuracy"]}
    if entry.get("replay_loss") is not None:
        record["baking/replay_loss"] = entry["replay_loss"]
    for token, accuracy in entry["per_strategy"].items():
        if accuracy is not None:
            record[f"baking/accuracy_{token_words(token)}"] = accuracy
    return record


def bake_reasoning_format(model, tokenizer, train: Sequence[ReasoningExample], val: Sequence[ReasoningExample],
                          config: FormatBakeConfig, *, replay_texts: Sequence[str] | None = None,
                          direct: Sequence[tuple[str, str]] = (), checkpoint_dir: Path | None = None,
                          log: Callable[[dict], None] | None = None) -> FormatBakeReport:
    """Fine-tune all of ``model`` (in place) on ``train`` for ``config.epochs`` epochs with MuonGrokfast,
    measuring :func:`format_accuracy` on ``val`` after each; then the convergence check (see module doc).
    ``replay_texts`` (pretraining documents, never held-out ones) are needed when ``config.replay_sequences > 0``.
    ``direct``: (prompt, answer text) pairs trained on with the examples (:func:`encode_direct`), not validated.

    With ``checkpoint_dir``, model, optimizer and history are saved atomically after every epoch, and a
    call with the same directory resumes after the last finished epoch (same result as one uninterrupted
    call). ``log`` gets one record per epoch (``baking/epoch``, ``baking/loss``, ``baking/val_accuracy``,
    ``baking/accuracy_<strategy>``).
    """
    thinking_token_ids(tokenizer)
    train, val = list(train), list(val)
    if not train or not val:
        raise ValueError(f"format baking needs training and validation examples, got {len(train)} and {len(val)}; "
                         "split them with split_examples")
    if config.replay_sequences and not replay_texts:
        raise ValueError(f"format_bake.replay_sequences={config.replay_sequences} needs replay_texts (pretraining "
                         "documents, e.g. Phase 1's replay_texts.json); pass them or set replay_sequences=0")
    started = time.time()
    pad_id = pad_token_id(tokenizer)
    replay = (Replay(tokenizer, replay_texts, config.seq_len, config.replay_sequences, seed=config.seed)
              if config.replay_sequences else None)
    train_encoded = [encode_example(tokenizer, example, config.seq_len) for example in train]
    train_encoded += [encode_direct(tokenizer, prompt, target, config.seq_len) for prompt, target in direct]
    val_encoded = [encode_example(tokenizer, example, config.seq_len) for example in val]
    optimizer = build_muon_grokfast(model, config.optimizer)
    fingerprint = _fingerprint(train, val, config, replay, direct)
    steps_per_epoch = -(-len(train_encoded) // config.batch_size)
    checkpoint = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    if checkpoint is not None and checkpoint.is_file():
        state = _load_checkpoint(checkpoint, model, optimizer, fingerprint, config)
    else:
        initial = _accuracy_of_encoded(model, val_encoded, pad_id, config.batch_size)
        state = {"fingerprint": fingerprint, "epochs_done": 0, "mitigating": False, "base_epochs": None,
                 "history": [], "initial_accuracy": initial["accuracy"], "wall_time_s": 0.0}
    resumed_from = state["epochs_done"]
    wall_before = state["wall_time_s"]

    while True:
        if not state["mitigating"] and state["epochs_done"] == config.epochs:
            converged = is_met(state["history"][-1]["val_accuracy"], ">=", config.accuracy_threshold)
            if converged or not config.mitigation_epochs:
                break
            state["mitigating"] = True  # the spec's mitigation: lower both learning rates, train a little longer
            state["base_epochs"] = config.epochs
            for group in optimizer.param_groups:
                group["lr"] *= config.mitigation_lr_factor
        planned = config.epochs + (config.mitigation_epochs if state["mitigating"] else 0)
        if state["epochs_done"] >= planned:
            break
        epoch = state["epochs_done"] + 1
        loss, replay_loss = _train_epoch(model, optimizer, train_encoded, pad_id, config,
                                         order_seed=config.seed * 100_003 + epoch, replay=replay,
                                         first_step=(epoch - 1) * steps_per_epoch)
        measured = _accuracy_of_encoded(model, val_encoded, pad_id, config.batch_size)
        entry = {"epoch": epoch, "stage": "mitigation" if epoch > config.epochs else "main",
                 "lr_factor": config.mitigation_lr_factor if epoch > config.epochs else 1.0, "loss": loss,
                 "replay_loss": replay_loss,
                 "val_accuracy": measured["accuracy"], "per_strategy": measured["per_strategy"]}
        state["history"].append(entry)
        state["epochs_done"] = epoch
        state["wall_time_s"] = wall_before + time.time() - started
        if log is not None:
            log(_log_record(entry))
        if checkpoint is not None:
            _save_checkpoint(checkpoint, model, optimizer, state)

    history = state["history"]
    final = history[-1]
    before = history[config.epochs - 1]["val_accuracy"]
    return FormatBakeReport(
        initial_accuracy=state["initial_accuracy"], final_accuracy=final["val_accuracy"],
        final_per_strategy=final["per_strategy"], accuracy_before_mitigation=before,
        accuracy_after_mitigation=final["val_accuracy"] if state["mitigating"] else None,
        mitigated=state["mitigating"], converged=is_met(final["val_accuracy"], ">=", config.accuracy_threshold),
        threshold=config.accuracy_threshold, epochs_run=state["epochs_done"], history=history,
        train_examples=len(train), direct_examples=len(direct), val_examples=len(val),
        truncated_examples=sum(item.truncated for item in (*train_encoded, *val_encoded)),
        train_target_tokens=sum(sum(item.target[1:]) for item in train_encoded),
        replay_tokens=0 if replay is None else replay.tokens,
        val_target_tokens=sum(sum(item.target[1:]) for item in val_encoded),
        wall_time_s=wall_before + time.time() - started, resumed_from_epoch=resumed_from)
