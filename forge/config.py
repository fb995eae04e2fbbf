"""Typed configuration: one dataclass per phase and one for the pipeline.

The dataclass defaults are the embedded ``tiny`` preset (CPU, offline, minutes); ``forge/presets/*.yaml``
override them. Load with :func:`load_pipeline_config`.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Iterator, Literal

from forge.abcycles.driver import ABCycleConfig
from forge.baking.config import BakingConfig
from forge.configtools import (ConfigError, apply_override, from_dict, load_yaml, parse_override)
from forge.merge.evolve import EvoMergeConfig
from forge.curriculum.levels import CurriculumPhaseConfig
from forge.optim import MuonGrokfastConfig
from forge.pretrain.config import CognateTrainConfig
from forge.quant.run import QuantizeJobConfig
from forge.quietstar.format_training import FormatBakeConfig
from forge.quietstar.rl import ThoughtRLConfig
from forge.tracking import TrackingConfig

CONFIG_DIR = Path(str(resources.files("forge") / "presets"))
"""The presets (``<name>.yaml``), package data: found the same way in a source checkout and an installed package."""

PHASES: tuple[str, ...] = ("cognate", "evomerge", "quietstar", "bitnet", "curriculum", "tool_persona")
"""The pipeline's phases, in order; each is the module ``forge/phases/<name>.py``."""

SPEC_CATEGORY_WEIGHTS = {"math": 0.4, "qa": 0.3, "code": 0.1, "commonsense": 0.1, "language": 0.1}


@dataclass
class DataConfig:
    data_dir: str | None = None
    """Folder with the reference data files (formats of shared/data); None: $FORGE_DATA_DIR if set."""
    sources: list[str] = field(default_factory=lambda: ["local", "offline"])
    """Order in which each dataset's sources are tried: local files, the Hugging Face hub, offline text
    (generated or read from Python's standard library, labelled as such in the manifest)."""
    allow_skip: bool = True
    """Record a dataset that no source provides as skipped (in the manifest) instead of failing."""


@dataclass
class CognateModelSpec:
    """One of the three Cognate models: what makes it different from the other two."""

    name: str
    """Short name, also the output directory name (model_<name>)."""
    act_threshold: float
    """ACT cumulative halting probability at which a token stops refining."""
    ltm_slots: int
    """Capacity of the Titans long-term memory."""
    seed: int
    """Seed for weights, data order and sampling."""
    stage_epochs: list[int]
    """Epochs for each pretraining stage (foundation, reasoning, advanced)."""
    category_weights: dict[str, float] = field(default_factory=lambda: dict(SPEC_CATEGORY_WEIGHTS))
    """Mix of dataset categories in this model's training data."""
    taskworld_share: float = 0.0
    """Share of each of this model's stages (characters) from the task world's train side (forge.data.taskworld,
    easy families and levels), outside the category weights, which divide the rest; 0: none."""
    taskworld_dataset: Literal["taskworld", "taskworld_direct"] = "taskworld"
    """Which task-world dataset the share draws: taskworld (mostly direct answers, some worked and calculator
    transcripts, so the instructions change what the model writes) or taskworld_direct (direct answers only)."""


def _spec_models() -> list[CognateModelSpec]:
    # Spec: reasoning (ACT 0.95, LTM 2048, seed 42, 10 epochs), memory (0.85, 8192, 43, 12, language-heavy),
    # speed (0.99, 2048, 44, 8, commonsense-heavy). The tiny preset keeps the differences with fewer epochs
    # and the memory scaled by 1/32 (64 and 256 slots, the same 1:4 ratio): at 2048+ slots the memory alone
    # costs several times the rest of a hidden-128 model. The speed model's task-world share is direct answers
    # only: it is the one that does not show its work (with the mixed modes it kept no more than chance of them).
    return [
        CognateModelSpec("reasoning", 0.95, 64, 42, [1, 1, 1], taskworld_share=0.3),
        CognateModelSpec("memory", 0.85, 256, 43, [1, 1, 2],
                         {"math": 0.2, "qa": 0.2, "code": 0.1, "commonsense": 0.1, "language": 0.4},
                         taskworld_share=0.15),
        CognateModelSpec("speed", 0.99, 64, 44, [1, 1, 1],
                         {"math": 0.2, "qa": 0.2, "code": 0.1, "commonsense": 0.4, "language": 0.1},
                         taskworld_share=0.15, taskworld_dataset="taskworld_direct"),
    ]


@dataclass
class CognateTrunkConfig:
    """The models' shared ancestor: the first curriculum stages trained once, then forked into every model."""

    enabled: bool = True
    """Train the trunk once and start every model from its weights (a common ancestor, which weight-space merges
    need); False: each model starts from its own random init and trains every stage itself."""
    stage_epochs: list[int] = field(default_factory=lambda: [1])
    """Epochs of each leading curriculum stage the trunk trains ([1]: one epoch of foundation); the models skip
    those stages (their first stage_epochs entries are then unused)."""
    seed: int = 41
    """Seed of the trunk's weights, data mix and order."""
    act_threshold: float = 0.95
    """ACT threshold the trunk trains with (the spec's default, the reasoning model's)."""
    act_max_steps: int | None = None
    """Supervision (ACT) steps the trunk trains with; None: cognate.architecture's. Not in the weights: the
    models train and run with the architecture's from the fork on. 1 halves the tiny trunk's step, at the price
    of held-out perplexity and an untrained halting head, and moved every later phase (docs/BENCHMARKS.md)."""
    ltm_slots: int = 64
    """Memory capacity the trunk trains with; a model with another capacity keeps every trunk weight
    (capacity is not in the weights: forge/pretrain/trunk.py)."""
    category_weights: dict[str, float] = field(default_factory=lambda: dict(SPEC_CATEGORY_WEIGHTS))
    """Mix of dataset categories in the trunk's data (the spec's Foundation weights)."""
    taskworld_share: float = 0.8
    """Share of the trunk's characters from the task world's train side (forge.data.taskworld, easy families and
    levels), outside the category weights, which divide the rest: a 0.94M model needs ~400k task tokens to answer
    above chance (docs/BENCHMARKS.md); 0: none."""
    taskworld_dataset: Literal["taskworld", "taskworld_direct"] = "taskworld_direct"
    """Which task-world dataset the share draws: taskworld_direct (direct answers only: a tiny model learns to
    answer from these about twice as fast per token as from the mixed modes, docs/BENCHMARKS.md) or taskworld."""
    spike_factor: float = 10.0
    """The trunk's divergence rule (cognate.train.spike_factor is the models'): a batch of mostly text after
    mostly task-world batches (loss ~1) measured 4.8x the recent mean without diverging."""
    chars_per_stage: int = 2_000_000
    """Characters in each of the trunk's stages (cognate.data.chars_per_stage is the models'): enough text for
    max_steps_per_epoch full batches."""
    max_steps_per_epoch: int | None = 800
    """Cap on the trunk's optimizer steps per epoch (cognate.train.max_steps_per_epoch is the models'); None: its
    whole corpus."""
    fork_lr_scale: float = 0.3
    """Peak learning rates of the forked models as a fraction of cognate.train.optimizer's: forks that restarted
    at the full rate lost most of the trunk's task-world answers (docs/BENCHMARKS.md); 1: the full rate."""


@dataclass
class CognateDataConfig:
    tokenizer: Literal["gpt2", "bpe"] = "bpe"
    """gpt2: the real 50257-token GPT-2 BPE; bpe: a byte-level BPE trained on the run's training text."""
    bpe_vocab_size: int = 4096
    """Vocabulary of the trained BPE (tokenizer=bpe)."""
    items_per_dataset: int | None = 300
    """Records taken from each dataset (None: all)."""
    chars_per_stage: int = 300_000
    """Characters of text in each pretraining stage's mix (small sets repeat, large ones are sampled)."""
    validation_fraction: float = 0.1
    """Share of documents held out for validation loss and perplexity."""
    replay_chars: int = 200_000
    """Characters of training documents written to replay_texts.json for later phases' replay."""
    taskworld_items: int = 20_000
    """Task-world train problems generated for the mixes with a taskworld_share (add and cmp at levels 1-2 have
    ~8,000 train problems: 20,000 draws cover nearly all of them, in several modes)."""


@dataclass
class CognateArchitecture(Mapping):
    """The ``CognateConfig`` arguments the three models share (they must share shapes to be merged later), read
    as a mapping of those keyword arguments. What differs per model (act_threshold, ltm_slots, seed) is set under
    ``cognate.models``, the vocabulary by the tokenizer; every other ``CognateConfig`` argument keeps its default."""

    hidden_size: int = 128
    """Width of the residual stream, z and y."""
    num_hidden_layers: int = 2
    """Decoder layers in the shared stack that every recursion re-applies."""
    num_attention_heads: int = 4
    """Attention heads (head_dim = hidden_size / heads, even for RoPE)."""
    intermediate_size: int = 352
    """SwiGLU inner width."""
    sliding_window: int = 64
    """Tokens each token attends to (itself and the window - 1 before it)."""
    max_position_embeddings: int = 512
    """Longest sequence the model is meant for (>= cognate.train.seq_len)."""
    memory_dim: int = 16
    """Width of the Titans memory's keys, values and queries."""
    memory_chunk_size: int = 32
    """Tokens per memory update (<= sliding_window)."""
    act_max_steps: int = 2
    """Most ACT supervision steps per forward."""
    trm_refinements: int = 2
    """TRM (z, y) refinements per supervision step."""
    trm_latent_updates: int = 1
    """TRM latent updates before each answer update."""
    activation_checkpointing: Literal["none", "layer", "stack"] = "none"
    """Recompute in backward instead of storing: none, each decoder layer's input (layer) or each stack pass's (stack)."""

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dataclass_fields__)

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)


@dataclass
class CognatePhaseConfig:
    architecture: CognateArchitecture = field(default_factory=CognateArchitecture)
    """CognateConfig arguments shared by the three models; unknown keys are refused when the config loads."""
    models: list[CognateModelSpec] = field(default_factory=_spec_models)
    """The three diverse models."""
    train: CognateTrainConfig = field(default_factory=CognateTrainConfig)
    """Training loop settings."""
    data: CognateDataConfig = field(default_factory=CognateDataConfig)
    """Tokenizer and corpus settings."""
    trunk: CognateTrunkConfig = field(default_factory=CognateTrunkConfig)
    """The shared trunk the models are forked from."""
    diversity_threshold: float = 0.3
    """Minimum behaviour diversity of the models (forge/pretrain/diversity.py); below it the criterion is missed."""


@dataclass
class QuietStarPhaseConfig:
    data_source: Literal["auto", "offline", "taskworld", "synthetic", "file"] = "auto"
    """Reasoning data: offline (traces from the data folder's solved problems), taskworld (the task world's
    multi-digit problems with their worked traces), synthetic (generated word problems with verified traces),
    file (``data_file``, written by ``python -m forge.quietstar``); auto: offline when a data folder is set,
    else taskworld."""
    data_file: str | None = None
    """The dataset read when data_source is file."""
    num_examples: int = 800
    """Reasoning examples to build (spec: >= 20,000)."""
    min_examples: int = 300
    """The data validation's minimum count (spec: 20,000; the tiny preset trains on fewer)."""
    format_bake: FormatBakeConfig = field(default_factory=lambda: FormatBakeConfig(
        epochs=5, seq_len=96, mitigation_epochs=1, replay_sequences=8, optimizer=MuonGrokfastConfig(
            muon_lr=3e-3, adam_lr=3e-3, grokfast_lambda=0.2, qk_clip_threshold=30.0)))
    """Step 1. Tiny: the spec's 5 epochs (+1 mitigation) at 3e-3 with 8 replayed pretraining sequences per step:
    the spec's 1e-4 left a small model's format accuracy unchanged over 2 epochs, without replay the held-out
    perplexity rose from 272 to 4,900, and after 2 epochs the traces did not hold the question's digits
    (docs/BENCHMARKS.md)."""
    taskworld_cells: list[str] = field(default_factory=lambda: ["add_2", "sub_2"])
    """The task-world cells (family_level, of forge.quietstar.taskworld.CELLS) the taskworld source trains and
    measures on; tiny: the 2-digit sums and differences, whose traces a tiny model learns to follow."""
    direct_examples: int = 120
    """Direct-answer task-world problems (train side, the curriculum's easy ones) Step 1 trains on beside the
    traces, so the model still answers directly with its thoughts suppressed (the scoreboard's way); 0: none."""
    rl: ThoughtRLConfig = field(default_factory=lambda: ThoughtRLConfig(
        episodes=8, check_every=4, check_items=8, max_rollbacks=2))
    """Step 2 (spec optimizer settings; the tiny preset runs 8 episodes with checks every 4)."""
    eval_problems: int = 192
    """Held-out problems per accuracy set (before Phase 3, after Step 1, after Step 2): 96 per task-world cell."""
    eval_max_new_tokens: int = 64
    """Generation budget per held-out problem (the thinking block counts: a task-world trace and its answer
    take up to 59 tokens)."""
    commonsense_task: str = "arc_easy"
    """Harness task of the commonsense check (needs a data folder)."""
    commonsense_limit: int = 64
    """Items of the commonsense check."""
    speed_prompts: int = 4
    """Prompts of the tokens/s measurement with and without thinking."""


@dataclass
class ToolPersonaPhaseConfig:
    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "keep_input_if_better": (
            "the scoreboard gate replaced it (scoreboard.gate, scoreboard.primary_metric, scoreboard.tolerance: a "
            "phase whose output scores worse than its best input hands that input on)")}
    """Keys an older config may still set, with what replaced them (the config loader refuses them so)."""

    cycles: ABCycleConfig = field(default_factory=ABCycleConfig)
    """The A/B driver: plateau threshold, iteration and time budget, oscillation, lock-in."""
    eval_actors: int = 4
    """Remote benchmark actors; the 4 variants of an iteration are evaluated at the same time (spec: 4)."""
    tool_sources: list[str] = field(default_factory=lambda: ["hard"])
    """Tool-use problem sources that need no data folder (hard: multi-digit problems the calculator solves)."""
    tool_sources_with_data: list[str] = field(default_factory=lambda: ["svamp"])
    """Sources added when a data folder is set (gsm8k, mbpp also exist)."""
    tool_items: int = 32
    """Problems per iteration (a subset of the held-out pool that rotates per iteration)."""
    tool_max_turns: int = 2
    """Model turns per tool-use problem (a call and the answer)."""
    tool_max_new_tokens: int = 24
    """Tokens per model turn."""
    tool_fewshot: int = 1
    """Worked transcripts before each problem."""
    tool_metric_weights: dict[str, float] = field(default_factory=lambda: {"accuracy": 1.0, "tool_usage_rate": 0.1})
    """A-cycle fitness: weighted sum of tool-use metrics (accuracy first; tool usage gives small models a signal)."""
    fitness: Literal["tooluse", "swebench"] = "tooluse"
    """A-cycle fitness: tooluse (the benchmark above) or swebench (official harness; Docker, swebench, data folder)."""
    initial_persona: str = "I solve problems step by step and check each result before I answer."
    """The B-cycle's first incumbent (ours; the spec starts from the model's own self-prompts)."""
    self_prompt_max_new_tokens: int = 64
    """Tokens sampled per self-prompt from the meta-prompt."""
    persona_items: int = 16
    """Items per task per B-cycle iteration (drawn with the iteration's seed)."""
    persona_max_new_tokens: int = 32
    """Generation budget of generated-answer tasks in the B-cycle."""
    validation_items: int = 48
    """Held-out items of the final check (A: disjoint from every iteration's subset)."""
    bake_inputs: int = 128
    """Train-side questions that follow the prompt in the bake's trajectories; their held-out and calibration splits
    measure the strength and choose the LoRA scale, so too few put a half-bake outside its band (docs/BENCHMARKS.md)."""
    bake_retain_items: int = 64
    """Train-side task-world problems asked directly (the scoreboard's form) whose gold answers every bake holds."""
    bake_retain_tool_items: int = 96
    """Train-side tool-use transcripts per source (the A-cycle's context with the initial tool prompt) whose calls and
    answers every bake also holds, so a bake keeps the tool use Phase 5 taught (32 kept less of it than 96:
    docs/BENCHMARKS.md); 0: none."""
    baking: BakingConfig = field(default_factory=lambda: BakingConfig(
        lora_r=16, learning_rate=1e-3, batch_size=8, samples_per_input=2, max_new_tokens=16, mode="target_strength",
        full_epochs=10.0, num_epochs=10.0, retention_weight=4.0))
    """Spec: LoRA r=16, lr 5e-4. Target mode: a half-bake closes half the prompt's KL gap (the LoRA update scaled
    to it), a lock-in runs the whole schedule; mode: epochs makes a half-bake half of it. The retained sequences
    weigh 4 (less lost the scoreboard's task accuracy); against them a persona's half-bake needs lr 1e-3 and up to 10
    epochs to reach its target (a bake stops at the first epoch whose calibration strength reaches it;
    docs/BENCHMARKS.md)."""

    def __post_init__(self) -> None:
        for name in ("bake_retain_items", "bake_retain_tool_items"):
            if getattr(self, name) < 0:
                raise ValueError(f"tool_persona.{name} must be >= 0 (0: no retention), got {getattr(self, name)}")

    def sources(self, with_data: bool) -> list[str]:
        """The tool-use problem sources of a run with (or without) a data folder."""
        return list(self.tool_sources) + (list(self.tool_sources_with_data) if with_data else [])


@dataclass
class RayConfig:
    address: str | None = None
    """Cluster to join ('auto' or 'host:port'); None: join RAY_ADDRESS if set, else start a local Ray."""
    num_cpus: int | None = None
    """CPUs a local Ray may use; None: all of this machine's."""
    num_gpus: int | None = None
    """GPUs a local Ray may use; None: the number torch sees (0 on a CPU-only machine)."""
    include_dashboard: bool = False
    """Start the dashboard with a local Ray (costs start-up time and memory)."""
    gpu_memory_gib: float | None = None
    """GPU memory (GiB per GPU) the resource planner may hand out; None: each GPU's free memory. 6 rehearses a
    GTX 1660 on a larger GPU."""
    max_restarts: int = 2
    """Times a dead actor (trainer, benchmark actor, EvoMerge trial) is restarted, resuming from its checkpoint."""


@dataclass
class ScoreboardConfig:
    """One fixed held-out evaluation of every phase's output (benchmarks/scoreboard.py) and the gate."""

    enabled: bool = True
    """Score every phase's output models (and Phase 1's) after the phase; rows in runs/<name>/scoreboard.json."""
    heldout_chars: int = 6000
    """Characters of Phase 1's held-out documents scored for perplexity (taken evenly across the set)."""
    wikitext_docs: int = 8
    """WikiText-2 held-out documents scored for perplexity (only with a data folder)."""
    wikitext_chars: int = 6000
    """Characters of WikiText-2 scored in all, split evenly over the documents (each is a whole article)."""
    task_items: int = 24
    """Held-out items per task with a data folder (ARC-E/C, PIQA, HellaSwag, GSM8K, MMLU)."""
    offline_task_items: int = 100
    """Held-out items of the task without a data folder (taskworld_easy, which has 90: all of them)."""
    max_new_tokens: int = 16
    """Generation budget of generated answers (GSM8K, tool-use turns, thinking usage)."""
    suppress_thinking: bool = True
    """Score the generated-answer tasks with the thinking tokens suppressed in models that have them (after Phase
    3): a direct answer, the same work for every phase's model; False: the model may open a thought, which a
    direct-answer task cuts at its stop sequence or max_new_tokens."""
    tool_items: int = 32
    """Held-out tool-use problems per source (offline: hard, the multi-digit problems Phase 6's A-cycle scores)."""
    tool_max_turns: int = 2
    """Model turns per tool-use problem (2: a call, then the answer; 1 leaves a model that calls no turn to answer)."""
    thinking_items: int = 6
    """Generated problems for thinking usage (models with the thinking tokens only)."""
    speed_prompts: int = 3
    """Prompts of the generation tokens/s measurement (one at a time, greedy)."""
    speed_tokens: int = 16
    """Tokens generated per speed prompt."""
    seed: int = 1234
    """Seed of the item draws, few-shot examples and bootstrap; fixed, so every row sees the same items."""
    bootstrap_resamples: int = 1000
    """Resamples of each bootstrap confidence interval."""
    confidence: float = 0.95
    """Coverage of the confidence intervals."""
    primary_metric: Literal["heldout_perplexity", "task_accuracy", "tool_accuracy", "wikitext_perplexity"] = \
        "heldout_perplexity"
    """The figure the gate and the console headline use."""
    gate: bool = True
    """A phase whose output is worse than its (best) input on primary_metric beyond the intervals hands its
    input on instead (needs enabled)."""
    gate_also_on: list[Literal["heldout_perplexity", "task_accuracy", "tool_accuracy", "wikitext_perplexity"]] = \
        field(default_factory=lambda: ["task_accuracy", "tool_accuracy"])
    """Further figures the gate judges, each the same way: an output worse on primary_metric or on any of these
    hands the input on (held-out perplexity alone passed a Quiet-STaR model that no longer answered directly; tool
    accuracy: Phase 6's bakes once took the tool use Phase 5 taught from 0.60 to 0.02)."""
    tolerance: float = 0.0
    """Extra margin before the gate acts, as a fraction of the input's value (0.1: 10% worse is tolerated)."""

    def settings(self):
        """What decides a row besides the model (the gate fields excluded)."""
        from benchmarks.scoreboard import ScoreboardSettings

        return ScoreboardSettings(**{f: getattr(self, f) for f in ScoreboardSettings.__dataclass_fields__})


@dataclass
class PipelineConfig:
    """Usage: ``python -m forge.pipeline [--preset tiny] [--set cognate.train.seq_len=256]``."""

    preset: str = "tiny"
    """Name of the preset these values came from (recorded in the run)."""
    phases: list[str] = field(default_factory=lambda: ["cognate", "evomerge", "quietstar", "bitnet", "curriculum",
                                                       "tool_persona"])
    """Phases to run, in pipeline order."""
    seed: int = 0
    """Global seed (each phase derives its own from it)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: the GPUs Ray offers, else CPU."""
    out_dir: str = "runs"
    """Parent folder of run directories."""
    run_name: str | None = None
    """Run directory name; None: the preset's name, so re-running the same command resumes."""
    strict_criteria: bool = False
    """Stop the run (exit code 3) at the first missed spec criterion; False: record it as missed and go on."""
    min_free_disk_gb: float = 1.0
    """Free disk space (GiB) required where the run writes before it starts (the spec's storage check: 15 at
    full size; a tiny run writes about 0.2); 0 turns the check off."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where datasets come from."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """wandb and metrics logging."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Ray start-up (join a cluster or start locally)."""
    cognate: CognatePhaseConfig = field(default_factory=CognatePhaseConfig)
    """Phase 1: three TRM x Titans-MAG models."""
    evomerge: EvoMergeConfig = field(default_factory=EvoMergeConfig)
    """Phase 2: the three models merged into one champion by evolution (Ray Tune)."""
    quietstar: QuietStarPhaseConfig = field(default_factory=QuietStarPhaseConfig)
    """Phase 3: thinking tokens, the reasoning format baked, RL on thoughts."""
    bitnet: QuantizeJobConfig = field(default_factory=lambda: QuantizeJobConfig(
        seq_len=32, eval_sequences=64, finetune_sequences=1600, guard_tasks_offline=("taskworld_easy",),
        guard_task_floor=0.2, heal_steps=400))
    """Phase 4: BitNet 1.58 ternary compression under the accuracy guard. Without a data folder Phase 1's replay
    documents calibrate and heal, its held-out documents and the task world's easy held-out problems guard."""
    curriculum: CurriculumPhaseConfig = field(default_factory=CurriculumPhaseConfig)
    """Phase 5: curriculum levels with the value prompts baked after each."""
    tool_persona: ToolPersonaPhaseConfig = field(default_factory=ToolPersonaPhaseConfig)
    """Phase 6: alternating A/B optimization of the tool prompt and the persona."""
    scoreboard: ScoreboardConfig = field(default_factory=ScoreboardConfig)
    """The held-out scoreboard of every phase's output, and the gate on it."""


def preset_path(name: str) -> Path:
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown preset '{name}'; available presets: {', '.join(available)}")
    return path


# A run's config.json holds the resolved config plus, under this key, the package versions it ran with;
# loading that file as --config reproduces the run, so the record is set aside on load.
RUN_VERSIONS_KEY = "versions"


def load_pipeline_config(preset: str | None = "tiny", *, config_file: str | None = None,
                         overrides: list[str] = (), phases: list[str] | None = None,
                         out_dir: str | None = None) -> PipelineConfig:
    """Preset YAML (or ``config_file``), then ``key=value`` overrides, then explicit arguments."""
    data: dict[str, Any] = load_yaml(config_file) if config_file else load_yaml(preset_path(preset or "tiny"))
    data.pop(RUN_VERSIONS_KEY, None)
    if not config_file:
        data.setdefault("preset", preset or "tiny")
    for text in overrides:
        path, value = parse_override(text)
        apply_override(data, path, value)
    if phases is not None:
        data["phases"] = phases
    if out_dir is not None:
        data["out_dir"] = out_dir
    config = from_dict(PipelineConfig, data)
    validate(config)
    return config


def validate(config: PipelineConfig) -> None:
    """Cross-field checks that the types alone cannot express."""
    for name in config.phases:
        if name not in PHASES:
            raise ConfigError(f"unknown phase '{name}'; valid phases: {', '.join(PHASES)}")
    order = list(PHASES)
    if config.phases != sorted(config.phases, key=order.index):
        raise ConfigError(f"phases must be in pipeline order: {', '.join(order)}")
    if len(set(config.phases)) != len(config.phases):
        raise ConfigError("phases: a phase is listed twice")
    if not config.min_free_disk_gb >= 0:
        raise ConfigError(f"min_free_disk_gb must be >= 0 (0: no storage check), got {config.min_free_disk_gb}")
    cognate = config.cognate
    if len(cognate.models) < 2:
        raise ConfigError("cognate.models: at least two models are needed (the spec trains three)")
    names = [m.name for m in cognate.models]
    if len(set(names)) != len(names):
        raise ConfigError(f"cognate.models: names must be unique, got {names}")
    for spec in cognate.models:
        if not 0.0 < spec.act_threshold < 1.0:
            raise ConfigError(f"cognate.models[{spec.name}].act_threshold must be in (0, 1)")
        if len(spec.stage_epochs) != 3 or min(spec.stage_epochs) < 0:
            raise ConfigError(f"cognate.models[{spec.name}].stage_epochs: three non-negative counts "
                              "(foundation, reasoning, advanced)")
    trunk = cognate.trunk
    if trunk.enabled and "trunk" in names:
        raise ConfigError("cognate.models: 'trunk' names the shared trunk's trainer; rename the model")
    if trunk.enabled and (not 1 <= len(trunk.stage_epochs) < 3 or min(trunk.stage_epochs) < 1
                          or not 0.0 < trunk.act_threshold < 1.0 or trunk.ltm_slots < 1):
        raise ConfigError("cognate.trunk: stage_epochs needs one or two counts >= 1 (the leading stages trained "
                          "once; the models train the rest), act_threshold in (0, 1), ltm_slots >= 1")
    if trunk.enabled and (trunk.chars_per_stage < 1
                          or any(n is not None and n < 1 for n in (trunk.max_steps_per_epoch, trunk.act_max_steps))
                          or not 0.0 < trunk.fork_lr_scale <= 1.0 or trunk.spike_factor <= 1.0):
        raise ConfigError("cognate.trunk: chars_per_stage must be >= 1, max_steps_per_epoch and act_max_steps "
                          ">= 1 (or null), fork_lr_scale in (0, 1] and spike_factor > 1")
    for name, share in [("trunk", trunk.taskworld_share), *((f"models[{m.name}]", m.taskworld_share)
                                                           for m in cognate.models)]:
        if not 0.0 <= share < 1.0:
            raise ConfigError(f"cognate.{name}.taskworld_share={share} must be in [0, 1): the share of each stage's "
                              "characters from the task world, the category weights dividing the rest")
    if cognate.data.taskworld_items < 1:
        raise ConfigError("cognate.data.taskworld_items must be >= 1")
    if config.device == "cuda" and not (config.ray.address or os.environ.get("RAY_ADDRESS")):
        import torch  # a local run: the GPU must be on this machine (a cluster's driver may have none)

        if not torch.cuda.is_available():
            raise ConfigError(f"device=cuda but torch {torch.__version__} sees no CUDA GPU on this machine: use "
                              "device=auto or cpu, or join a GPU cluster with ray.address")
    if cognate.architecture.max_position_embeddings < cognate.train.seq_len:
        raise ConfigError("cognate.architecture.max_position_embeddings must be >= cognate.train.seq_len")
    if config.device == "cpu" and cognate.train.precision == "fp16":
        raise ConfigError("cognate.train.precision=fp16 needs a CUDA GPU but device=cpu: use auto, float32 or bf16")
    board = config.scoreboard
    if not 0.0 < board.confidence < 1.0 or board.tolerance < 0 or board.bootstrap_resamples < 1:
        raise ConfigError("scoreboard: confidence must be in (0, 1), tolerance >= 0, bootstrap_resamples >= 1")
    if min(board.heldout_chars, board.task_items, board.tool_items, board.speed_prompts, board.speed_tokens,
           board.max_new_tokens, board.thinking_items, board.wikitext_docs, board.wikitext_chars,
           board.tool_max_turns, board.offline_task_items) < 1:
        raise ConfigError("scoreboard: item counts, token budgets and turns must be >= 1")
    if not 0.0 < cognate.data.validation_fraction < 0.5:
        raise ConfigError("cognate.data.validation_fraction must be in (0, 0.5)")
    if "tool_persona" in config.phases and config.tool_persona.fitness == "swebench":
        _check_swebench(config)
    unknown_sources = set(config.data.sources) - {"local", "hub", "offline"}
    if unknown_sources:
        raise ConfigError(f"data.sources: unknown {sorted(unknown_sources)}; valid: local, hub, offline")


def _check_swebench(config: PipelineConfig) -> None:
    """tool_persona.fitness=swebench runs the official harness: refuse at once where it cannot run."""
    from benchmarks.swebench import harness_problems
    from forge.data.readers import DATA_DIR_ENV

    problems = harness_problems()
    if not (config.data.data_dir or os.environ.get(DATA_DIR_ENV)):
        problems.append(f"no data folder with swebench/ (set data.data_dir or {DATA_DIR_ENV})")
    if problems:
        raise ConfigError("tool_persona.fitness=swebench needs the official SWE-bench harness, which cannot run "
                          "here: " + "; ".join(problems) + ". Use tool_persona.fitness=tooluse (the default) or "
                          "run where Docker and swebench are available.")
