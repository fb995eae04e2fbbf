"""Phase 5's curriculum: levels of arithmetic of rising difficulty, a short training stage per level,
greedy-answer accuracy on each level's held-out items, and the value prompts baked after each level.

Levels are built deterministically from a seed, from one of two sources (``level_source``):

- ``taskworld``: each level is some task-world families at one task-world level (``taskworld_ladder``;
  ``forge.data.taskworld``, the problems Phase 1 trains on), in direct mode: the model reads
  ``taskworld.prompt`` and is trained to write ``taskworld.target`` (``Answer: N``); training items come
  from the world's train side, accuracy items from its held-out side (split by canonical form, so they
  never share a problem), scored with ``taskworld.is_correct`` (exact match);
- ``synthetic``: a ladder from one operation on small numbers to several on large ones (``Start with 12.
  Add 7. Multiply by 3. What is the result?``); the model reads ``Question: ...\\n`` and is trained to write
  ``<solution>\\nAnswer: <answer>\\n``, the format ``forge.quietstar.generate.answer_accuracy`` reads.

With a data folder the top levels are SVAMP and then GSM8K word problems (synthetic format), drawn from the
train side of ``forge.data.splits`` for training and from the held-out side for accuracy. A level is passed
when its held-out accuracy after training reaches ``pass_accuracy``.
Everything here is plain PyTorch; ``forge/phases/curriculum.py`` runs it as a phase.
"""
from __future__ import annotations

import math
import os
import random
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal, Sequence

import torch
import yaml

from forge.baking.config import BakingConfig
from forge.baking.trajectories import Trajectory
from forge.console import Progress
from forge.data import taskworld
from forge.data.batching import length_groups
from forge.data.replay import Replay
from forge.modelinfo import max_positions, pad_token_id
from forge.pretrain.trainer import lr_factor
from forge.quietstar.generate import answer_accuracy, generate

DATA_LEVEL_SOURCES = ("svamp", "gsm8k")  # word-problem sets a level can draw from, easiest first
DEFAULT_VALUES_FILE = Path(str(resources.files("forge") / "presets" / "prompts" / "values.yaml"))
_GSM8K_ANNOTATION = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator notes "<<48/2=24>>"
_WORDS = {"+": "Add {b}.", "-": "Subtract {b}.", "*": "Multiply by {b}."}
TASKWORLD_MODE = "direct"  # question -> "Answer: N", the format Phase 1's task-world trunk trains


@dataclass
class TaskWorldLevel:
    """One curriculum level drawn from the task world."""

    families: list[str]  # task-world families of the level's items (forge.data.taskworld.FAMILIES)
    level: int  # the task-world difficulty level of every item (1..forge.data.taskworld.MAX_LEVEL)

    def __post_init__(self) -> None:
        unknown = [family for family in self.families if family not in taskworld.FAMILIES]
        if not self.families or unknown or len(set(self.families)) != len(self.families):
            raise ValueError(f"a taskworld_ladder entry has families {self.families}: give distinct names from "
                             f"{', '.join(taskworld.FAMILIES)}")
        if self.level not in taskworld.LEVELS:
            raise ValueError(f"a taskworld_ladder entry has level {self.level}: choose one of {list(taskworld.LEVELS)}")


@dataclass
class CurriculumPhaseConfig:
    """Phase 5: curriculum levels, each trained and measured, with the value prompts baked after each."""

    num_levels: int = 2  # levels of rising difficulty (spec: 10; tiny: 2); taskworld: one per taskworld_ladder entry
    level_source: Literal["taskworld", "synthetic"] = "taskworld"  # where the levels below the data levels
    # come from: the task world Phase 1 trains on, or synthetic operation chains
    taskworld_ladder: list[TaskWorldLevel] = field(default_factory=lambda: [
        TaskWorldLevel(families=["cmp"], level=3), TaskWorldLevel(families=["add", "cmp"], level=3)])
    # taskworld: each level's families and task-world level, task-world levels non-decreasing (tiny: cmp, then
    # add joins, at level 3, one above the level 2 Phase 1 trains on, which Phase 5's input already passes;
    # chosen by measurement, docs/BENCHMARKS.md)
    pass_accuracy: float = 0.5  # a level is passed when its held-out accuracy after training reaches this
    seed: int = 0  # seeds item generation, data sampling and training order
    train_items: int = 256  # training items per level (data levels: at most what the train side has)
    heldout_items: int = 128  # held-out items per level on which accuracy is measured (128: a 95% interval
    # about +-0.05 at the tiny model's accuracies)
    max_operations: int = 3  # operations per item at the top synthetic level (the first has one)
    operand_start: int = 20  # largest operand at the first level
    operand_end: int = 999  # largest operand at the top synthetic level (geometric climb in between)
    data_levels: list[str] = field(default_factory=lambda: list(DATA_LEVEL_SOURCES))  # word-problem sets
    # that replace the top levels, in order, when a data folder is found and two synthetic levels remain
    data_dir: str | None = None  # folder with svamp/ and gsm8k/; None: the pipeline's data.data_dir or
    # $FORGE_DATA_DIR; with neither, every level is synthetic
    max_item_chars: int = 600  # word problems with a longer question + solution are left out
    steps_per_level: int = 120  # optimizer steps of each level's training stage (tiny: 60 taught the tool
    # transcripts no copy, 120 does; docs/BENCHMARKS.md, tools that pay)
    batch_size: int = 8  # sequences per optimizer step
    learning_rate: float = 1e-3  # AdamW peak learning rate
    lr_schedule: Literal["constant", "cosine"] = "constant"  # after the warm-up: constant, or cosine decay to
    # 10% of the peak at the stage's last step (Phase 1's schedule, per level)
    warmup_steps: int = 5  # linear learning-rate warm-up at the start of each stage
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    grad_clip: float = 1.0  # global gradient-norm clip; 0 disables it
    max_new_tokens: int = 16  # greedy tokens generated per held-out item when measuring accuracy (a direct
    # task-world answer takes about 6; word problems and synthetic solutions need more)
    values_file: str | None = None  # YAML of the value prompts; None: forge/presets/prompts/values.yaml of the project
    bake_inputs: int = 48  # the level's first training questions: each value prompt's teacher reads one after
    # the prompt, and all prompts are baked together on them (forge.baking.bake_together)
    bake_retain_items: int = 64  # the level's last training items (not the bake's questions; fewer if the level
    # has fewer), whose answers the bake holds (forge.baking retention, ``baking.retention_target``); 0: none
    bake_retain_rehearsal: int = 64  # the first of the rehearsal problems (``rehearsal_items``, fewer if there are
    # fewer: easy direct answers) whose answers the bake holds besides, so value prompts that ask for worked steps
    # do not turn the easy cells' direct answers into worked ones (docs/BENCHMARKS.md); 0: none
    bake_skill_tolerance: float = 0.05  # the bakes keep a level's skill when its held-out accuracy after them is
    # at most this far below the accuracy after training
    replay_sequences: int = 4  # Phase 1 training-text blocks replayed in every step (keeps the model's text
    # modelling while it learns the level); 0: off
    replay_seq_len: int = 128  # tokens per replayed block
    rehearsal_items: int = 192  # train-side direct problems of the task world's easy cells (the scoreboard's
    # taskworld_easy, none of its items) shuffled into every task-world level's training, so a harder level costs
    # less of what Phase 1 taught (it does not stop the calls the tool transcripts teach on bare questions:
    # docs/BENCHMARKS.md); 0: none
    tool_use_items: int = 512  # train-side tool-use transcripts per source (Phase 6's sources, prompt and format)
    # shuffled into every level's training stage, so Phase 6's A-cycle starts from a model that calls tools and
    # copies the question into the call and the result into the answer; 0: none
    baking: BakingConfig = field(default_factory=lambda: BakingConfig(
        lora_r=8, lora_alpha=16, learning_rate=5e-3, batch_size=8, samples_per_input=2, max_new_tokens=16,
        full_epochs=3.0, num_epochs=3.0, mode="target_strength", retention_target="reference",
        retention_weight=0.25))
    # how the value prompts are baked (a full bake: target strength 1, the whole schedule, reported as
    # reached when within strength_tolerance of 1); tiny: few samples, short trajectories, 3 epochs, a 10x spec
    # learning rate, and the retained answers held to their own tokens at 0.25 (held to the trained model's
    # distributions, the level's accuracy after the bakes was 0.07 lower at the same strengths: docs/BENCHMARKS.md)

    def __post_init__(self) -> None:
        positive = ("num_levels", "train_items", "heldout_items", "max_operations", "steps_per_level",
                    "batch_size", "max_new_tokens", "max_item_chars")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"curriculum.{name} must be >= 1, got {getattr(self, name)}")
        if not 2 <= self.operand_start <= self.operand_end:
            raise ValueError(f"curriculum needs 2 <= operand_start <= operand_end, got {self.operand_start} and "
                             f"{self.operand_end}")
        if self.level_source == "taskworld":
            if len(self.taskworld_ladder) != self.num_levels:
                raise ValueError(f"curriculum.taskworld_ladder has {len(self.taskworld_ladder)} entries but "
                                 f"num_levels is {self.num_levels}: give one entry per level (data levels replace "
                                 "the top entries) or set num_levels to the ladder's length")
            ladder = [entry.level for entry in self.taskworld_ladder]
            if ladder != sorted(ladder):
                raise ValueError(f"curriculum.taskworld_ladder levels {ladder} fall: order the entries by "
                                 "task-world level, easiest first")
        if not 0.0 < self.pass_accuracy <= 1.0:
            raise ValueError(f"curriculum.pass_accuracy must be in (0, 1], got {self.pass_accuracy}")
        unknown = [name for name in self.data_levels if name not in DATA_LEVEL_SOURCES]
        if unknown:
            raise ValueError(f"curriculum.data_levels: unknown {unknown}; choose from {', '.join(DATA_LEVEL_SOURCES)}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"curriculum.lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.learning_rate <= 0 or self.weight_decay < 0 or self.grad_clip < 0 or self.warmup_steps < 0:
            raise ValueError("curriculum needs learning_rate > 0 and weight_decay, grad_clip, warmup_steps >= 0")
        if self.replay_sequences < 0 or self.replay_seq_len < 2:
            raise ValueError(f"curriculum needs replay_sequences >= 0 and replay_seq_len >= 2, got "
                             f"{self.replay_sequences} and {self.replay_seq_len}")
        if self.rehearsal_items < 0:
            raise ValueError(f"curriculum.rehearsal_items must be >= 0, got {self.rehearsal_items}")
        if self.tool_use_items < 0:
            raise ValueError(f"curriculum.tool_use_items must be >= 0, got {self.tool_use_items}")
        least = 3 if self.baking.mode == "target_strength" else 2  # target mode also keeps one to calibrate on
        if self.bake_inputs < least:
            raise ValueError(f"curriculum.bake_inputs must be >= {least} (one is held out to measure strength"
                             f"{', one to calibrate the target strength on' if least == 3 else ''}), "
                             f"got {self.bake_inputs}")
        if self.bake_retain_items < 0 or self.bake_retain_rehearsal < 0 or not 0.0 <= self.bake_skill_tolerance < 1.0:
            raise ValueError(f"curriculum needs bake_retain_items, bake_retain_rehearsal >= 0 and bake_skill_tolerance "
                             f"in [0, 1), got {self.bake_retain_items}, {self.bake_retain_rehearsal} and "
                             f"{self.bake_skill_tolerance}")


@dataclass(frozen=True)
class LevelItem:
    """One task: the question, its reference answer and a worked solution."""

    question: str  # what the model is asked
    answer: str  # the final answer (a number)
    solution: str  # worked steps leading to the answer ("" for a task-world item: direct mode has none)
    task: taskworld.TaskItem | None = None  # the task-world problem, whose own prompt, target and is_correct
    # the level uses; None for synthetic items and word problems


@dataclass(frozen=True)
class LevelSpec:
    """What a level is made of."""

    level: int  # 1-based position in the curriculum
    source: str  # "taskworld", "synthetic" or a word-problem set of DATA_LEVEL_SOURCES
    operations: int  # arithmetic operations per synthetic item (0 otherwise)
    max_operand: int  # largest operand of a synthetic item (0 otherwise)
    families: tuple[str, ...] = ()  # task-world families of the items (taskworld only)
    taskworld_level: int = 0  # task-world level of the items (taskworld only; 0 otherwise)


@dataclass
class Level:
    """A level's spec with its disjoint training and held-out items."""

    spec: LevelSpec
    train: list[LevelItem]
    heldout: list[LevelItem]


@dataclass(frozen=True)
class ValuePrompt:
    """A prompt baked after every level."""

    name: str  # short identifier, e.g. "eudaimonia_1"
    text: str  # the prompt itself


# ------------------------------------------------------------------------------------ levels

def level_specs(config: CurriculumPhaseConfig, with_data: bool) -> list[LevelSpec]:
    """The levels in order: the task-world or synthetic ladder, then (with data) the word-problem sets on top."""
    data = list(config.data_levels) if with_data and config.num_levels - len(config.data_levels) >= 2 else []
    below = config.num_levels - len(data)  # levels of the ladder under the word problems
    if config.level_source == "taskworld":
        specs = [LevelSpec(level=index + 1, source="taskworld", operations=0, max_operand=0,
                           families=tuple(entry.families), taskworld_level=entry.level)
                 for index, entry in enumerate(config.taskworld_ladder[:below])]
    else:
        specs = []
        for index in range(below):
            progress = index / (below - 1) if below > 1 else 0.0
            specs.append(LevelSpec(
                level=index + 1, source="synthetic",
                operations=1 + round(progress * (config.max_operations - 1)),
                max_operand=round(config.operand_start * (config.operand_end / config.operand_start) ** progress)))
    specs.extend(LevelSpec(level=below + offset + 1, source=name, operations=0, max_operand=0)
                 for offset, name in enumerate(data))
    return specs


def synthetic_item(operations: int, max_operand: int, rng: random.Random) -> LevelItem:
    """A chain of ``operations`` steps on operands up to ``max_operand`` (multipliers 2..12, no negatives)."""
    value = rng.randint(2, max_operand)
    words, steps = [f"Start with {value}."], []
    for _ in range(operations):
        op = rng.choice("+-*" if value >= 2 else "+*")
        if op == "*":
            operand = rng.randint(2, min(12, max_operand))
        elif op == "-":
            operand = rng.randint(1, min(value, max_operand))
        else:
            operand = rng.randint(2, max_operand)
        result = {"+": value + operand, "-": value - operand, "*": value * operand}[op]
        words.append(_WORDS[op].format(b=operand))
        steps.append(f"{value} {op} {operand} = {result}.")
        value = result
    return LevelItem(question=" ".join(words) + " What is the result?", answer=str(value), solution=" ".join(steps))


def synthetic_level(spec: LevelSpec, train_count: int, heldout_count: int, seed: int) -> Level:
    """Distinct items of one synthetic level; the first ``heldout_count`` are held out."""
    rng = random.Random(f"curriculum/{seed}/{spec.level}")
    wanted, items, seen = heldout_count + train_count, [], set()
    attempts = 0
    while len(items) < wanted:
        attempts += 1
        if attempts > 50 * wanted:
            raise ValueError(
                f"level {spec.level} ({spec.operations} operation(s), operands <= {spec.max_operand}) yields only "
                f"{len(items)} distinct items, {wanted} wanted: lower train_items/heldout_items or raise operand_start")
        item = synthetic_item(spec.operations, spec.max_operand, rng)
        if item.question not in seen:
            seen.add(item.question)
            items.append(item)
    return Level(spec=spec, train=items[heldout_count:], heldout=items[:heldout_count])


def taskworld_level(spec: LevelSpec, train_count: int, heldout_count: int, seed: int) -> Level:
    """Distinct problems of the level's families at its task-world level: training items from the world's
    train side, accuracy items from its held-out side (``taskworld.generate_items``: never the same problem)."""
    sides = []
    for split, count in (("train", train_count), ("heldout", heldout_count)):
        # A draw of its own per level (seed * 1000 + level), so two ladder entries alike still differ.
        items = taskworld.generate_items(count, split=split, seed=seed * 1000 + spec.level, families=spec.families,
                                         levels=[spec.taskworld_level], unique=True)
        if len(items) < count:
            raise ValueError(
                f"level {spec.level} (task world {'+'.join(spec.families)} at level {spec.taskworld_level}) has only "
                f"{len(items)} distinct {split} problems, {count} wanted: lower curriculum.train_items/heldout_items "
                "or raise that taskworld_ladder entry's level")
        sides.append([LevelItem(question=item.question, answer=item.answer, solution="", task=item) for item in items])
    return Level(spec=spec, train=sides[0], heldout=sides[1])


def word_problem(source: str, record: dict) -> LevelItem:
    """A SVAMP or GSM8K record (forge.data.readers schema) as an item with its worked solution."""
    if source == "svamp":
        solution = f"{record['equation']} = {record['final_answer']}."
    else:
        steps = _GSM8K_ANNOTATION.sub("", record["answer"].rsplit("####", 1)[0])
        solution = " ".join(steps.split())
    return LevelItem(question=record["question"], answer=record["final_answer"], solution=solution)


def data_level(spec: LevelSpec, train_count: int, heldout_count: int, seed: int, data_dir: str | os.PathLike,
               max_chars: int) -> Level:
    """Word problems: training items from the train side of ``forge.data.splits``, accuracy items from
    the held-out side, each a seeded sample of those no longer than ``max_chars``."""
    from forge.data import splits

    sides = []
    for side, count in ((splits.train_items, train_count), (splits.heldout_items, heldout_count)):
        items = [word_problem(spec.source, record) for record in side(spec.source, data_dir)]
        items = [item for item in items if len(item.question) + len(item.solution) <= max_chars]
        if not items:
            raise ValueError(f"{spec.source} has no problems of at most {max_chars} characters in {data_dir}: "
                             "raise curriculum.max_item_chars")
        rng = random.Random(f"curriculum/{seed}/{spec.level}/{side.__name__}")
        sides.append(rng.sample(items, min(count, len(items))))
    return Level(spec=spec, train=sides[0], heldout=sides[1])


def build_levels(config: CurriculumPhaseConfig, data_dir: str | os.PathLike | None) -> list[Level]:
    """Every level of the curriculum (word-problem levels only when ``data_dir`` is given)."""
    levels = []
    for spec in level_specs(config, with_data=data_dir is not None):
        if spec.source == "taskworld":
            levels.append(taskworld_level(spec, config.train_items, config.heldout_items, config.seed))
        elif spec.source == "synthetic":
            levels.append(synthetic_level(spec, config.train_items, config.heldout_items, config.seed))
        else:
            levels.append(data_level(spec, config.train_items, config.heldout_items, config.seed, data_dir,
                                     config.max_item_chars))
    return levels


def prompt_text(item: LevelItem) -> str:
    """What the model reads before writing its solution: the task world's prompt, else the format
    ``answer_accuracy`` prompts with."""
    if item.task is not None:
        return taskworld.prompt(item.task, TASKWORLD_MODE)
    return f"Question: {item.question}\n"


def completion_text(item: LevelItem) -> str:
    """What the model is trained to write after :func:`prompt_text`: the task world's target, else the worked
    steps, then the answer line."""
    if item.task is not None:
        return taskworld.target(item.task, TASKWORLD_MODE)
    return f"{item.solution}\nAnswer: {item.answer}\n"


# ------------------------------------------------------------------------------------ training

def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]], max_len: int | None) -> list[tuple[list[int], int]]:
    """(token ids, prompt length) per (prompt, completion) text pair: prompt + completion + EOS; pairs longer
    than ``max_len`` dropped."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    encoded = []
    for prompt_str, completion_str in pairs:
        prompt = tokenizer(prompt_str, add_special_tokens=False)["input_ids"]  # as answer_accuracy encodes it
        completion = tokenizer(completion_str, add_special_tokens=False)["input_ids"] + eos
        if max_len is None or len(prompt) + len(completion) <= max_len:
            encoded.append((prompt + completion, len(prompt)))
    return encoded


def encode_items(tokenizer, items: Sequence[LevelItem], max_len: int | None) -> list[tuple[list[int], int]]:
    """:func:`encode_pairs` of the items' prompts and completions."""
    return encode_pairs(tokenizer, [(prompt_text(item), completion_text(item)) for item in items], max_len)


def collate(encoded: Sequence[tuple[list[int], int]], pad_id: int,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels); labels are -100 on the prompt and the padding."""
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    for row, (ids, prompt_len) in enumerate(encoded):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        mask[row, :len(ids)] = 1
        labels[row, prompt_len:len(ids)] = torch.tensor(ids[prompt_len:])
    return input_ids.to(device), mask.to(device), labels.to(device)


def _checked_encoding(model, tokenizer, items: Sequence[LevelItem]) -> list[tuple[list[int], int]]:
    encoded = encode_items(tokenizer, items, max_positions(model))
    if not encoded:
        raise ValueError(f"every item is longer than the model's {max_positions(model)} positions; "
                         "lower curriculum.max_item_chars")
    return encoded


@torch.no_grad()
def answer_loss(model, tokenizer, items: Sequence[LevelItem], batch_size: int = 8) -> float:
    """Mean cross-entropy per solution/answer token of ``items`` given their prompts (no training)."""
    device = next(model.parameters()).device
    encoded = _checked_encoding(model, tokenizer, items)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        input_ids, mask, labels = collate(encoded[start:start + batch_size], pad_token_id(tokenizer), device)
        logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        target = labels[:, 1:]
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                         ignore_index=-100, reduction="sum"))
        count += int((target != -100).sum())
    model.train(was_training)
    return total / count


@dataclass
class StageReport:
    """What one level's training stage did."""

    steps: int  # optimizer steps taken
    sequences: int  # training sequences available (items that fit the model's positions)
    extra_sequences: int  # of those, the extra (prompt, completion) pairs, e.g. tool-use demonstrations
    loss_first: float  # the model's own training loss at the first step
    loss_last: float  # mean training loss over the last tenth of the steps (the level's loss, without replay)
    replay_loss_mean: float | None  # mean language-modelling loss of the replayed blocks; None: no replay
    wall_time_s: float  # time the stage took


def train_stage(model, tokenizer, items: Sequence[LevelItem], config: CurriculumPhaseConfig,
                extra_pairs: Sequence[tuple[str, str]] = (), replay: Replay | None = None,
                replay_first_step: int = 0) -> StageReport:
    """Next-token training on the items' solutions and answers (prompt tokens masked out), with AdamW;
    ``extra_pairs`` (prompt, completion) texts are shuffled in with the items; with ``replay``, each step adds the
    language-modelling loss of its replay blocks (step ``replay_first_step + step``). Each batch goes through
    :func:`batch_loss_backward` (long and short rows padded apart).

    The loss is the model's own (``labels=``), so a Cognate model keeps its ACT and deep-supervision terms.
    """
    started = time.perf_counter()
    extra = encode_pairs(tokenizer, extra_pairs, max_positions(model))
    encoded = _checked_encoding(model, tokenizer, items) + extra
    model.requires_grad_(True)  # every weight trains; a merged bake leaves them frozen
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    rng = random.Random(f"curriculum-train/{config.seed}")
    order: list[int] = []
    losses, replay_losses = [], []
    model.train()
    progress = Progress("curriculum: level training", config.steps_per_level, "step")
    for step in progress.steps(range(config.steps_per_level)):
        if len(order) < config.batch_size:
            refill = list(range(len(encoded)))
            rng.shuffle(refill)
            order.extend(refill)
        batch, order = order[:config.batch_size], order[config.batch_size:]
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * stage_lr_factor(step, config)
        optimizer.zero_grad(set_to_none=True)
        task_loss = batch_loss_backward(model, [encoded[i] for i in batch], pad_token_id(tokenizer))
        loss = task_loss
        if replay is not None:
            replay_loss = replay.loss(model, replay_first_step + step)
            replay_loss.backward()
            replay_losses.append(replay_loss.item())
            loss += replay_losses[-1]
        if not math.isfinite(loss):  # before the optimizer step: a non-finite gradient never reaches the weights
            raise FloatingPointError(f"training loss became {loss} at step {step} of the level; "
                                     "lower curriculum.learning_rate")
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        losses.append(task_loss)
    model.eval()
    tail = losses[-max(1, len(losses) // 10):]
    return StageReport(steps=len(losses), sequences=len(encoded), extra_sequences=len(extra), loss_first=losses[0],
                       loss_last=sum(tail) / len(tail),
                       replay_loss_mean=sum(replay_losses) / len(replay_losses) if replay_losses else None,
                       wall_time_s=time.perf_counter() - started)


def stage_lr_factor(step: int, config: CurriculumPhaseConfig) -> float:
    """The learning rate of a level's training step, as a fraction of ``config.learning_rate``."""
    if config.lr_schedule == "cosine":
        return lr_factor(step, config.steps_per_level, config.warmup_steps + 1)
    return min(1.0, (step + 1) / (config.warmup_steps + 1))


def batch_loss_backward(model, rows: Sequence[tuple[list[int], int]], pad_id: int) -> float:
    """Back-propagate the model's own loss (``labels=``) on one batch of encoded rows and return it. A batch of
    long and short rows runs as two padded parts, each loss weighted by its share of the batch's answer tokens
    (``forge.data.batching``): the cross-entropy and its gradient are the whole batch's; a Cognate model's ponder
    and deep-supervision terms are weighted the same way, close to the batch's."""
    device = next(model.parameters()).device
    targets = [len(ids) - prompt_len for ids, prompt_len in rows]  # the tokens each row's loss is a mean over
    total = 0.0
    for part, share in length_groups([len(ids) for ids, _ in rows], targets):
        input_ids, mask, labels = collate([rows[r] for r in part], pad_id, device)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels, use_cache=False).loss * share
        loss.backward()
        total += loss.item()
    return total


# ------------------------------------------------------------------------------------ accuracy

def level_correct(model, tokenizer, items: Sequence[LevelItem], max_new_tokens: int,
                  context: str = "") -> list[bool]:
    """Whether each item's greedy answer (thoughts stripped) is right: task-world items by ``taskworld.is_correct``
    (exact match), the others by ``forge.quietstar.generate.answer_accuracy`` (the answer line compared as
    numbers), whose ``Question: ...\n`` prompt :func:`prompt_text` matches. ``context``: text the model reads
    before each question (a value prompt, as a bake's teacher reads it)."""
    if not items:
        raise ValueError("level accuracy needs at least one item")
    if all(item.task is not None for item in items):
        outputs = generate(model, tokenizer, [context + prompt_text(item) for item in items],
                           max_new_tokens=max_new_tokens)
        return [taskworld.is_correct(item.answer, output.visible_text) for item, output in zip(items, outputs)]
    if any(item.task is not None for item in items):
        raise ValueError("a level's items are all task-world problems or none: build them with build_levels")
    problems = [(item.question, item.answer) for item in items]
    return [row["correct"] for row in answer_accuracy(model, tokenizer, problems, max_new_tokens=max_new_tokens,
                                                      context=context)["items"]]


def level_accuracy(model, tokenizer, items: Sequence[LevelItem], max_new_tokens: int, context: str = "") -> float:
    """Share of :func:`level_correct` items (``context`` read before each question)."""
    correct = level_correct(model, tokenizer, items, max_new_tokens, context)
    return sum(correct) / len(correct)


def right_by_family(items: Sequence[LevelItem], correct: Sequence[int]) -> dict[str, list[int]]:
    """Per task-world family of ``items`` (in order of first appearance): [answered right, items], from each
    item's 0/1 in ``correct``; ``{}`` for items without a family (synthetic and word-problem levels)."""
    if len(items) != len(correct):
        raise ValueError(f"{len(items)} items but {len(correct)} answers")
    tally: dict[str, list[int]] = {}
    for item, right in zip(items, correct):
        if item.task is not None:
            counts = tally.setdefault(item.task.family, [0, 0])
            counts[0] += int(right)
            counts[1] += 1
    return tally


def level_passed(accuracy: float, config: CurriculumPhaseConfig) -> bool:
    """The pass rule: a level is passed when its held-out accuracy reaches ``pass_accuracy``."""
    return accuracy >= config.pass_accuracy


# ------------------------------------------------------------------------------------ value prompts

def values_path(config: CurriculumPhaseConfig) -> Path:
    """The value-prompt file the config names (the project's forge/presets/prompts/values.yaml by default)."""
    return Path(config.values_file) if config.values_file is not None else DEFAULT_VALUES_FILE


def load_value_prompts(path: str | os.PathLike) -> list[ValuePrompt]:
    """The prompts of a values file: ``prompts:`` a list of ``{name: ..., text: ...}``, names unique."""
    path = Path(path)
    fix = (f"fix {path} (see forge/presets/prompts/values.yaml in the project for the format) or point "
           "curriculum.values_file at a valid file")
    if not path.is_file():
        raise FileNotFoundError(f"values file {path} does not exist: create it with a 'prompts:' list of "
                                "{name, text} entries (copy forge/presets/prompts/values.yaml) or set curriculum.values_file")
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as err:
        raise ValueError(f"values file {path} is not valid YAML ({err}); {fix}") from err
    if not isinstance(data, dict) or not isinstance(data.get("prompts"), list) or not data["prompts"]:
        raise ValueError(f"values file {path} must hold a non-empty 'prompts:' list; {fix}")
    prompts = []
    for index, entry in enumerate(data["prompts"]):
        if not isinstance(entry, dict) or set(entry) != {"name", "text"} or \
                not all(isinstance(entry[key], str) and entry[key].strip() for key in ("name", "text")):
            raise ValueError(f"values file {path}: prompt {index + 1} must have exactly a non-empty 'name' and "
                             f"'text', got {entry!r}; {fix}")
        prompts.append(ValuePrompt(name=entry["name"].strip(), text=" ".join(entry["text"].split()) + "\n"))
    names = [prompt.name for prompt in prompts]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"values file {path}: prompt names {duplicates} appear more than once; {fix}")
    return prompts


def rehearsal_pairs(config: CurriculumPhaseConfig) -> list[tuple[str, str]]:
    """The (prompt, completion) pairs every task-world level's training rehearses: ``rehearsal_items`` direct
    problems of the easy cells Phase 1 trained (none for synthetic and word-problem levels)."""
    if config.level_source != "taskworld":
        return []
    return taskworld.direct_pairs(config.rehearsal_items, seed=config.seed)


def bake_inputs(level: Level, count: int) -> list[str]:
    """Texts that follow each value prompt in the bake: prompts of the level's first training items."""
    return [prompt_text(item) for item in level.train[:count]]


def retained_sequences(tokenizer, pairs: Sequence[tuple[str, str]], max_len: int | None) -> list[Trajectory]:
    """(prompt, completion) text pairs as the sequences a bake holds (``bake_prompt(..., retain=...)``): the unbaked
    model and the student read the same prompt, the completion's tokens are scored; pairs longer than ``max_len``
    dropped (:func:`encode_pairs`)."""
    return [Trajectory(tuple(ids[:prompt_len]), tuple(ids[:prompt_len]), tuple(ids[prompt_len:]))
            for ids, prompt_len in encode_pairs(tokenizer, pairs, max_len)]


def retained_answers(tokenizer, level: Level, config: CurriculumPhaseConfig, max_len: int | None) -> list[Trajectory]:
    """The sequences a level's bake holds: the level's last ``bake_retain_items`` training items, none of the first
    ``bake_inputs`` (:func:`bake_inputs`' questions), fewer when the level has fewer; then the first
    ``bake_retain_rehearsal`` rehearsal problems (:func:`rehearsal_pairs`). Each its prompt and its reference
    completion."""
    count = config.bake_retain_items
    items = level.train[max(config.bake_inputs, len(level.train) - count):] if count else []
    pairs = [(prompt_text(item), completion_text(item)) for item in items]
    return retained_sequences(tokenizer, pairs + rehearsal_pairs(config)[:config.bake_retain_rehearsal], max_len)


def count_tokens(tokenizer, text: str) -> int:
    """Tokens of ``text`` without special tokens (value prompts are recorded with their length)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])

