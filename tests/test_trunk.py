"""Phase 1's trunk and forks: the models start from the trunk's exact weights whatever their memory capacity,
ACT threshold and ACT steps, the trunk is trained once (not once per model), a resumed phase does not retrain a
finished trunk, and with the trunk off each model trains every stage from its own initialisation as before. The trunk's
mix holds the task world at its configured share (the stage's documents), and the held-out text never does."""
import shutil
from dataclasses import replace

import pytest
import torch

from forge.artifacts import load_model_dir, read_json, read_manifest
from forge.config import CognateTrainConfig, load_pipeline_config
from forge.data import sources, taskworld
from forge.data.heldout import HELDOUT, TEXT_FILES
from forge.data.tokenizer import train_bpe_tokenizer
from forge.phases.cognate import TRUNK_DIR, TRUNK_NAME
from forge.pipeline import run_pipeline
from forge.tracking import TrackingConfig, read_metrics
from forge.pretrain.stages import StageMixConfig, build_stage
from forge.pretrain.trainer import Stage, TrainJob, run_train_job
from forge.pretrain.trunk import ForkError, fork_from_trunk

ARCH = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
        "sliding_window": 8, "memory_dim": 8, "memory_chunk_size": 8, "act_max_steps": 2, "trm_refinements": 1,
        "max_position_embeddings": 64}
SEQ = 16


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    texts = [f"{a} plus {b} is {a + b}." for a in range(40) for b in range(5)]
    path = tmp_path_factory.mktemp("tok")
    train_bpe_tokenizer(texts, vocab_size=300, seed=0).save_pretrained(path)
    return path


def _job(tmp_path, tokenizer_dir, name, *, epochs, ltm_slots, act_threshold, seed, init_from=None,
         act_max_steps=2):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    arch = dict(ARCH, ltm_slots=ltm_slots, act_threshold=act_threshold, act_max_steps=act_max_steps,
                vocab_size=len(tokenizer),
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id)
    blocks = torch.randint(0, len(tokenizer), (8, SEQ), generator=torch.Generator().manual_seed(seed))
    train = CognateTrainConfig(seq_len=SEQ, batch_size=4, micro_batch_size=4, max_steps_per_epoch=2, warmup_steps=1,
                               eval_max_batches=1)
    return TrainJob(name=name, architecture=arch, seed=seed, train=train, stages=[Stage("s", blocks, epochs)],
                    val_blocks=blocks[:4], tokenizer_dir=tokenizer_dir, out_dir=tmp_path / f"model_{name}",
                    checkpoint_dir=tmp_path / "work" / name, metrics_dir=tmp_path,
                    tracking=TrackingConfig(wandb_mode="disabled"), group="test", init_from=init_from)


def test_a_fork_starts_from_the_trunks_exact_weights_at_any_capacity_threshold_and_act_steps(tmp_path, tokenizer_dir):
    trunk_job = _job(tmp_path, tokenizer_dir, "trunk", epochs=1, ltm_slots=8, act_threshold=0.95, seed=1,
                     act_max_steps=1)
    assert run_train_job(trunk_job)["steps"] == 2
    trunk = load_model_dir(trunk_job.out_dir)[0]
    # Zero epochs: the fork's saved weights are exactly what it starts its own training from.
    fork_job = _job(tmp_path, tokenizer_dir, "fork", epochs=0, ltm_slots=32, act_threshold=0.85, seed=2,
                    init_from=trunk_job.out_dir)
    run_train_job(fork_job)
    fork = load_model_dir(fork_job.out_dir)[0]
    assert (fork.config.ltm_slots, fork.config.act_threshold, fork.config.act_max_steps) == (32, 0.85, 2)
    assert trunk.config.act_max_steps == 1
    trunk_state, fork_state = trunk.state_dict(), fork.state_dict()
    assert trunk_state.keys() == fork_state.keys()
    assert all(torch.equal(trunk_state[k], fork_state[k]) for k in trunk_state)
    # Capacity is not in the weights: the larger memory's fixed features extend the trunk's.
    for trunk_layer, fork_layer in zip(trunk.model.layers, fork.model.layers):
        assert torch.equal(fork_layer.memory.init_w1[:8], trunk_layer.memory.init_w1)
    # A model from its own seed (no trunk) is not the trunk: the comparison above can fail.
    alone = _job(tmp_path, tokenizer_dir, "alone", epochs=0, ltm_slots=8, act_threshold=0.95, seed=2)
    run_train_job(alone)
    alone_state = load_model_dir(alone.out_dir)[0].state_dict()
    assert not all(torch.equal(trunk_state[k], alone_state[k]) for k in trunk_state)


def test_a_trunk_of_another_architecture_is_refused_by_name(tmp_path, tokenizer_dir):
    trunk_job = _job(tmp_path, tokenizer_dir, "trunk", epochs=0, ltm_slots=8, act_threshold=0.95, seed=1)
    run_train_job(trunk_job)
    from forge.models import CognateConfig, CognateForCausalLM

    wider = CognateForCausalLM(CognateConfig(**dict(trunk_job.architecture, intermediate_size=96)))
    with pytest.raises(ForkError, match="mlp.*shapes|shapes.*mlp"):
        fork_from_trunk(wider, trunk_job.out_dir)


SMALL = ["phases=[cognate]", "scoreboard.enabled=false", "tracking.wandb_mode=disabled",
         "cognate.train.max_steps_per_epoch=2", "cognate.train.checkpoint_every=1", "cognate.train.batch_size=4",
         "cognate.train.micro_batch_size=4", "cognate.train.seq_len=64", "cognate.train.eval_max_batches=2",
         "cognate.data.items_per_dataset=60", "cognate.data.chars_per_stage=40000", "cognate.data.bpe_vocab_size=512",
         "cognate.data.validation_fraction=0.2",
         "cognate.models=[{name: a, act_threshold: 0.9, ltm_slots: 32, seed: 1, stage_epochs: [1, 1, 1]},"
         " {name: b, act_threshold: 0.99, ltm_slots: 64, seed: 2, stage_epochs: [1, 0, 1]}]",
         "cognate.trunk.ltm_slots=32", "cognate.trunk.act_max_steps=1",
         "cognate.trunk.max_steps_per_epoch=2", "cognate.trunk.chars_per_stage=40000",
         "cognate.data.taskworld_items=200"]


def _steps(metrics, source):
    return [m["step"] for m in metrics if m["source"] == source and "train/loss" in m]


def test_the_trunk_trains_once_and_a_resumed_phase_forks_it_without_retraining(tmp_path, shared_data, ray_session):
    config = load_pipeline_config("tiny", overrides=[*SMALL, f"data.data_dir={shared_data}"], out_dir=str(tmp_path))
    run_dir = run_pipeline(config)
    phase = run_dir / "cognate"
    metrics = read_metrics(phase / "metrics.jsonl")
    assert _steps(metrics, f"cognate-{TRUNK_NAME}") == [1, 2]  # one epoch of foundation, trained once
    assert _steps(metrics, "cognate-a") == [1, 2, 3, 4] and _steps(metrics, "cognate-b") == [1, 2]  # stages 2-3 only
    summary = read_json(phase / "manifest.json")["summary"]
    assert summary["trunk"]["reused"] is False and summary["trunk"]["steps"] == 2
    # The trunk trains with one ACT step (cognate.trunk.act_max_steps), the models with the architecture's two
    # from the fork on.
    assert summary["trunk"]["act_max_steps"] == 1
    assert load_model_dir(phase / "work" / TRUNK_DIR)[0].config.act_max_steps == 1
    assert load_model_dir(phase / "model_a")[0].config.act_max_steps == 2
    assert [s["stage"] for s in summary["models"]["a"]["data"]["stages"]] == ["reasoning", "advanced"]
    # The task world is in the trunk's mix at the tiny preset's share, with direct answers only, not in the models'
    # (their share is 0 here), and none of its documents is in the held-out text.
    trunk_draws = {d["dataset"]: d for d in summary["trunk"]["stages"][0]["datasets"]}
    assert trunk_draws["taskworld_direct"]["weight"] == 0.8 and trunk_draws["taskworld_direct"]["drawn"] > 0
    assert "taskworld" not in trunk_draws
    assert 0 < summary["trunk"]["taskworld_corpus_tokens"] < summary["trunk"]["corpus_tokens"]
    model_draws = [d["dataset"] for stage in summary["models"]["a"]["data"]["stages"] for d in stage["datasets"]]
    assert not {"taskworld", "taskworld_direct"} & set(model_draws)
    assert summary["models"]["a"]["data"]["taskworld_corpus_tokens"] == 0
    generated = sources.load_texts("taskworld_direct", sources.SourceConfig(max_items=200)).texts
    assert not set(generated) & set(read_json(phase / TEXT_FILES[HELDOUT])["texts"])
    trunk_digest = read_manifest(phase / "work" / TRUNK_DIR)["digest"]
    diversity = summary["diversity"]
    assert set(diversity["profiles"]["a"]) == {"heldout_perplexity", "halting_steps", "memory_use", "speed"}
    assert summary["criteria"]["behaviour_diversity"]["value"] == diversity["behaviour_diversity"]

    # As after a kill once the trunk was saved: the models' outputs and checkpoints are gone, the trunk is not.
    (phase / "manifest.json").unlink()
    for name in ("a", "b"):
        shutil.rmtree(phase / f"model_{name}")
        shutil.rmtree(phase / "work" / name)
    run_pipeline(config)
    metrics = read_metrics(phase / "metrics.jsonl")
    assert _steps(metrics, f"cognate-{TRUNK_NAME}") == [1, 2]  # no new trunk step
    assert _steps(metrics, "cognate-a") == [1, 2, 3, 4] * 2
    summary = read_json(phase / "manifest.json")["summary"]
    assert summary["trunk"]["reused"] is True and summary["trunk"]["steps"] == 2
    assert read_manifest(phase / "work" / TRUNK_DIR)["digest"] == trunk_digest


def test_with_the_trunk_off_each_model_trains_every_stage_from_its_own_init(tmp_path, shared_data, ray_session):
    config = load_pipeline_config("tiny", overrides=[*SMALL, f"data.data_dir={shared_data}",
                                                     "cognate.trunk.enabled=false"], out_dir=str(tmp_path))
    run_dir = run_pipeline(config)
    phase = run_dir / "cognate"
    metrics = read_metrics(phase / "metrics.jsonl")
    assert not _steps(metrics, f"cognate-{TRUNK_NAME}") and not (phase / "work" / TRUNK_DIR).exists()
    assert _steps(metrics, "cognate-a") == [1, 2, 3, 4, 5, 6] and _steps(metrics, "cognate-b") == [1, 2, 3, 4]
    summary = read_json(phase / "manifest.json")["summary"]
    assert summary["trunk"] is None
    assert [s["stage"] for s in summary["models"]["b"]["data"]["stages"]] == ["foundation", "reasoning", "advanced"]


def test_a_fixed_share_puts_train_side_task_world_documents_into_the_stage():
    src = sources.SourceConfig(order=("offline",), max_items=400, allow_skip=True)
    config = StageMixConfig(chars_per_stage=30_000, sources=src, fixed_shares={"taskworld": 0.8})
    mix = build_stage("foundation", config)
    draws = {draw.dataset: draw for draw in mix.draws}
    world = draws["taskworld"]
    assert world.source == "offline:taskworld" and world.weight == 0.8
    assert 0.8 * 30_000 <= world.drawn_chars < 0.8 * 30_000 + max(map(len, mix.texts))
    # The categories share the rest (foundation offline: math 0.4 and code 0.1 of the spec's weights).
    assert mix.category_weights == pytest.approx({"math": 0.2 * 0.8, "code": 0.2 * 0.2})
    assert sum(draw.weight for draw in mix.draws) == pytest.approx(1.0)
    # The stage's documents: that many task-world problems, none held out, mostly answer-only (direct mode).
    generated = set(sources.load_texts("taskworld", src).texts)
    documents = [text for text in mix.texts if text in generated]
    assert len(documents) == world.drawn and len(mix.texts) == sum(draw.drawn for draw in mix.draws)
    heldout = taskworld.heldout_set(40, families=taskworld.EASY_FAMILIES, levels=taskworld.EASY_LEVELS)
    assert not {taskworld.text(item, mode) for item in heldout for mode in taskworld.MODES} & set(documents)
    assert sum(text.startswith("Question: ") for text in documents) > 0.6 * len(documents)
    assert not generated & set(build_stage("foundation", replace(config, fixed_shares={})).texts)
    with pytest.raises(ValueError, match="fixed shares"):
        StageMixConfig(fixed_shares={"taskworld": 1.0})
