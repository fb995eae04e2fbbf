"""Faults a cluster brings: an actor process killed with SIGKILL is restarted and resumes from its checkpoint;
one that keeps dying fails its phase with a message naming it, its attempts and its log."""
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from actors.restarts import ATTEMPTS_FILE, ActorLost, read_attempts
from forge.artifacts import load_model_dir, read_json
from forge.pipeline import run_pipeline
from forge.tracking import read_metrics
from test_pipeline import small_config

COGNATE_ONLY = ["phases=[cognate]", "cognate.train.max_steps_per_epoch=6"]  # after the trunk: a 12 steps, b 6


class KillAtStep(threading.Thread):
    """Watches a phase's metrics and SIGKILLs the actor process of ``source`` once it has logged ``step``."""

    def __init__(self, phase_dir, source: str, attempts_file, step: int, timeout: float = 300):
        super().__init__(daemon=True)
        self.phase_dir, self.source, self.attempts_file = phase_dir, source, attempts_file
        self.step, self.timeout = step, timeout
        self.killed: dict | None = None  # {"pid", "step", "time"} once done

    def _step(self) -> int:
        metrics = self.phase_dir / "metrics.jsonl"
        if not metrics.is_file():
            return -1
        return max((m.get("step", -1) for m in read_metrics(metrics) if m["source"] == self.source), default=-1)

    def run(self) -> None:
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            step = self._step()
            attempts = read_attempts(self.attempts_file)
            if step >= self.step and attempts:
                os.kill(attempts[-1]["pid"], signal.SIGKILL)
                self.killed = {"pid": attempts[-1]["pid"], "step": step, "time": time.time()}
                return
            time.sleep(0.1)


def test_killed_trainer_actor_is_restarted_and_resumes_from_its_checkpoint(tmp_path, shared_data, ray_session):
    config = small_config(tmp_path, shared_data, COGNATE_ONLY)
    phase_dir = tmp_path / "tiny" / "cognate"
    killer = KillAtStep(phase_dir, "cognate-a", phase_dir / "work" / "a" / ATTEMPTS_FILE, step=3)
    killer.start()
    run_pipeline(config)
    killer.join()
    assert killer.killed is not None, "the trainer was never killed"

    manifest = read_json(phase_dir / "manifest.json")
    assert manifest["status"] == "complete"
    assert manifest["summary"]["models"]["a"]["steps"] == 12 and manifest["summary"]["models"]["b"]["steps"] == 6
    attempts = read_attempts(phase_dir / "work" / "a" / ATTEMPTS_FILE)
    assert [a["restarted"] for a in attempts] == [False, True]
    assert attempts[0]["pid"] == killer.killed["pid"] != attempts[1]["pid"]
    assert attempts[0]["actor_id"] == attempts[1]["actor_id"]  # the same actor, in a new process
    assert len(read_attempts(phase_dir / "work" / "b" / ATTEMPTS_FILE)) == 1  # the other trainer went on
    records = [m for m in read_metrics(phase_dir / "metrics.jsonl") if m["source"] == "cognate-a"]
    resumed = [m["train/resumed_at_step"] for m in records if "train/resumed_at_step" in m]
    # checkpoint_every=1: the restarted trainer goes on from the step it had reached (or the one before, when
    # the kill fell between logging a step and checkpointing it), not from step 0.
    assert len(resumed) == 1 and killer.killed["step"] - 1 <= resumed[0] <= killer.killed["step"]
    steps_after = [m["step"] for m in records if "train/loss" in m and m["time"] > attempts[1]["started_unix"]]
    assert steps_after and min(steps_after) == resumed[0] + 1 and max(steps_after) == 12


def test_trainer_dying_past_max_restarts_fails_the_phase_naming_it(tmp_path, shared_data, ray_session):
    config = small_config(tmp_path, shared_data, [*COGNATE_ONLY, "ray.max_restarts=0"])
    phase_dir = tmp_path / "tiny" / "cognate"
    attempts_file = phase_dir / "work" / "a" / ATTEMPTS_FILE
    killer = KillAtStep(phase_dir, "cognate-a", attempts_file, step=2)
    killer.start()
    with pytest.raises(ActorLost) as caught:
        run_pipeline(config)
    killer.join()
    message = str(caught.value)
    pid = killer.killed["pid"]
    assert "cognate trainer 'a' died 1 time(s)" in message and "ray.max_restarts=0" in message
    assert f"processes: {pid}" in message and str(attempts_file) in message
    log = read_attempts(attempts_file)[0]["log"]
    assert log.endswith(f"-{pid}.out") and log in message
    manifest = read_json(phase_dir / "manifest.json")
    assert manifest["status"] == "failed" and "ActorLost" in manifest["error"] and "outputs" not in manifest


def test_killed_benchmark_actor_is_restarted_and_its_evaluation_gives_the_same_result(tmp_path, ray_session):
    """Phase 6's pool: the restarted actor re-reads its model directory, then loads the caller's weights again
    (a WeightsRef) before the re-sent evaluation, so the scores equal those of an in-process run."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from actors.benchmark_actor import BenchmarkActor, WeightsRef, evaluate_prompts
    from actors.restarts import restart_options
    from benchmarks.tooluse import INITIAL_TOOL_PROMPT, TOOL_PROMPT_VARIANTS, ToolUseConfig, evaluate_tool_use
    from benchmarks.tooluse_problems import load_problems
    from forge.artifacts import save_model_dir
    from forge.data.tokenizer import load_gpt2_tokenizer

    ray = ray_session
    tokenizer = load_gpt2_tokenizer()

    def model(seed):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=len(tokenizer),
                                          n_positions=512)).eval()

    config = ToolUseConfig(max_turns=2, max_new_tokens=24, num_fewshot=0, num_samples=0, batch_size=4)
    problems = load_problems(["easy"], limit=16, seed=7)  # about 1 s per prompt in-process
    prompts = [INITIAL_TOOL_PROMPT, *TOOL_PROMPT_VARIANTS[:2]]
    evaluated = model(1)  # the weights evaluated: not those of the directory the actors start from
    expected = [evaluate_tool_use(evaluated, tokenizer, prompt=p, problems=problems, config=config).to_dict()
                for p in prompts]
    model_dir = save_model_dir(model(0), tokenizer, tmp_path / "base", phase="test")
    attempts_file = tmp_path / ATTEMPTS_FILE
    actors = [BenchmarkActor.options(num_cpus=0.5, **restart_options(1)).remote(
        str(model_dir), attempts_file=str(attempts_file)) for _ in range(2)]
    ray.get([actor.info.remote() for actor in actors])
    first_pid = read_attempts(attempts_file, actors[0]._actor_id.hex())[0]["pid"]
    killed_at = []

    def kill_soon():
        time.sleep(0.3)  # the first evaluation is sent (or under way): either way the call is re-sent
        os.kill(first_pid, signal.SIGKILL)
        killed_at.append(time.time())

    killer = threading.Thread(target=kill_soon, daemon=True)
    try:
        weights = WeightsRef(ray.put(evaluated.state_dict()))
        killer.start()
        results = evaluate_prompts(actors, prompts, method="evaluate_tool_use", problems=problems, config=config,
                                   weights=weights)
        finished = time.time()
        killer.join()
        # Ray restarts the killed actor whether or not its share of the evaluations had already come back (on an
        # idle machine they can finish within the 0.3 s): wait for the new process's record, not a race with it.
        deadline = time.time() + 60
        attempts = read_attempts(attempts_file, actors[0]._actor_id.hex())
        while len(attempts) < 2 and time.time() < deadline:
            time.sleep(0.5)
            attempts = read_attempts(attempts_file, actors[0]._actor_id.hex())
    finally:
        for actor in actors:
            ray.kill(actor)
    assert killed_at and killed_at[0] < finished, "the actor was killed only after the evaluations had finished"
    assert [a["restarted"] for a in attempts] == [False, True] and attempts[1]["pid"] != first_pid

    def without_timing(result):
        return {k: v for k, v in result.items() if k not in ("wall_s", "cached")}

    assert [without_timing(r) for r in results] == [without_timing(e) for e in expected]


def test_killed_evomerge_trial_is_run_again_and_measures_the_same(tmp_path, ray_session):
    """Tune's FailureConfig: a trial whose process dies is run again; the measured terms (but speed) match an
    uninterrupted experiment's."""
    from forge.merge.evolve import EvoMergeConfig
    from forge.phases.evomerge import Candidate, evaluate_candidates
    from test_evomerge import _texts, _tiny_parents

    dirs = _tiny_parents(tmp_path)
    loaded = [load_model_dir(d) for d in dirs.values()]
    template, tokenizer = loaded[0]
    candidates = [Candidate(f"parent_{name}", None, model.state_dict(), 0.0)
                  for name, (model, _) in zip(dirs, loaded)]
    config = EvoMergeConfig(perplexity_window=64, speed_batch=2, speed_seq_len=16, speed_repeats=1, eval_actors=2)
    texts = _texts(20, seed=99)
    storage = tmp_path / "tune"
    kwargs = {"storage": storage, "data_dir": None, "device": "cpu", "max_failures": 1}
    plain = evaluate_candidates(candidates, template, tokenizer, texts, config, name="plain", **kwargs)

    attempts_file = storage / f"killed_{ATTEMPTS_FILE}"
    killed = []

    def kill_first_trial():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            attempts = read_attempts(attempts_file)
            if attempts:
                os.kill(attempts[0]["pid"], signal.SIGKILL)
                killed.append(attempts[0]["pid"])
            time.sleep(0.02)

    killer = threading.Thread(target=kill_first_trial, daemon=True)
    killer.start()
    again = evaluate_candidates(candidates, template, tokenizer, texts, config, name="killed", **kwargs)
    killer.join()
    assert killed, "no trial process was killed"
    assert len(read_attempts(attempts_file)) > len(read_attempts(storage / f"plain_{ATTEMPTS_FILE}"))
    assert [a["pid"] for a in read_attempts(attempts_file)].count(killed[0]) == 1  # it did not come back
    for before, after in zip(plain.terms, again.terms):
        assert {k: v for k, v in after.items() if k not in TIMING_TERMS} == \
            {k: v for k, v in before.items() if k not in TIMING_TERMS}


TIMING_TERMS = {"tokens_per_s", "transfer_s", "eval_s"}


def test_evomerge_trial_failing_past_the_limit_names_the_candidate_the_attempts_and_the_log(tmp_path, ray_session):
    from forge.merge.evolve import EvoMergeConfig
    from forge.phases.evomerge import Candidate, evaluate_candidates
    from test_evomerge import _texts, _tiny_parents

    model, tokenizer = load_model_dir(_tiny_parents(tmp_path)["a"])
    broken = dict(model.state_dict())
    broken.pop(next(iter(broken)))  # does not load into the template: every attempt fails
    config = EvoMergeConfig(perplexity_window=64, speed_batch=2, speed_seq_len=16, speed_repeats=1, eval_actors=1)
    with pytest.raises(RuntimeError) as caught:
        evaluate_candidates([Candidate("g1_c0_broken", None, broken, 0.0)], model, tokenizer, _texts(20, seed=99),
                            config, storage=tmp_path / "tune", name="gen_001", data_dir=None, device="cpu",
                            max_failures=1)
    message = str(caught.value)
    assert "candidate g1_c0_broken failed 2 time(s) (ray.max_restarts=1)" in message
    log = message.split("log: ")[1].split(". ")[0]
    assert log.endswith("error.txt") and Path(log).is_file()
    assert len(read_attempts(tmp_path / "tune" / f"gen_001_{ATTEMPTS_FILE}")) == 2


# ------------------------------------------------------------------------------------------ bad state

def _tiny_training(tmp_path, steps_per_epoch=4):
    """A tiny Cognate model and everything forge.pretrain.trainer.train needs (random tokens: only positions matter)."""
    from forge.config import CognateTrainConfig
    from forge.models import CognateConfig, CognateForCausalLM
    from forge.tracking import Tracker, TrackingConfig
    from forge.pretrain.trainer import Stage

    torch.manual_seed(0)
    model = CognateForCausalLM(CognateConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        sliding_window=16, max_position_embeddings=32, memory_dim=8, memory_chunk_size=8, act_max_steps=1,
        trm_refinements=1, ltm_slots=8, pad_token_id=0, bos_token_id=0, eos_token_id=0))
    cfg = CognateTrainConfig(seq_len=16, batch_size=2, micro_batch_size=2, max_steps_per_epoch=steps_per_epoch,
                             checkpoint_every=1, warmup_steps=1, eval_max_batches=1)
    stages = [Stage("s", torch.randint(1, 64, (16, 16)), epochs=1)]
    tracker = Tracker(tmp_path, name="tiny", config=TrackingConfig(wandb_mode="disabled"))
    return model, stages, torch.randint(1, 64, (2, 16)), cfg, tracker


def _train(tmp_path, **overrides):
    from forge.pretrain.trainer import train

    model, stages, val, cfg, tracker = _tiny_training(tmp_path, **overrides)
    return train(model, stages, val, cfg, checkpoint_dir=tmp_path / "ckpt", tracker=tracker,
                 device=torch.device("cpu"), seed=0, micro_batch=2)


def _checkpoints_at(tmp_path, steps):
    """checkpoint.prev.pt at steps[0], checkpoint.pt at steps[1], written by the trainer's own writer."""
    from forge.optim import build_muon_grokfast
    from forge.pretrain.trainer import Position, _save_checkpoint

    model, _, _, cfg, _ = _tiny_training(tmp_path)
    optimizer = build_muon_grokfast(model, cfg.optimizer)
    for step in steps:
        _save_checkpoint(tmp_path / "ckpt" / "checkpoint.pt", model, optimizer, Position(step=step, batch=step),
                         _CPU_SCALER)
    return tmp_path / "ckpt"


_CPU_SCALER = torch.amp.GradScaler("cpu", enabled=False)  # float32 training: the pass-through scaler


def _resume(tmp_path):
    from forge.optim import build_muon_grokfast
    from forge.pretrain.trainer import resume_checkpoint

    model, _, _, cfg, _ = _tiny_training(tmp_path)
    return resume_checkpoint(tmp_path / "ckpt" / "checkpoint.pt", model, build_muon_grokfast(model, cfg.optimizer),
                             _CPU_SCALER, "tiny")


def _poison(path):
    """Write NaN into the first weight of a saved checkpoint."""
    state = torch.load(path, weights_only=False)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name].view(-1)[0] = float("nan")
    torch.save(state, path)
    return name


def test_resume_takes_the_last_checkpoint_when_it_is_sound(tmp_path):
    _checkpoints_at(tmp_path, [3, 4])
    assert _resume(tmp_path).step == 4


def test_truncated_checkpoint_falls_back_to_the_previous_one_with_a_message(tmp_path, caplog):
    ckpt = _checkpoints_at(tmp_path, [3, 4])
    data = (ckpt / "checkpoint.pt").read_bytes()
    (ckpt / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with caplog.at_level("WARNING", logger="forge.pretrain.trainer"):
        assert _resume(tmp_path).step == 3
    assert "checkpoint.pt: it is unreadable" in caplog.text and "falling back to checkpoint.prev.pt" in caplog.text


def test_nan_weights_fall_back_and_both_bad_restart_from_step_0(tmp_path, caplog):
    ckpt = _checkpoints_at(tmp_path, [3, 4])
    name = _poison(ckpt / "checkpoint.pt")
    with caplog.at_level("WARNING", logger="forge.pretrain.trainer"):
        assert _resume(tmp_path).step == 3
        assert f"non-finite weights in {name}" in caplog.text
        (ckpt / "checkpoint.prev.pt").write_bytes(b"")
        caplog.clear()
        assert _resume(tmp_path) is None
    assert "no usable checkpoint is left: training restarts from step 0" in caplog.text
    # train() then starts over and still runs every step.
    assert _train(tmp_path)["steps"] == 4


class CheckpointingHooks:
    """A/B hooks that save a real model directory per iteration, as Phase 6 does; every variant wins."""

    def __init__(self, model, tokenizer, work_dir):
        self.model, self.tokenizer, self.work_dir = model, tokenizer, work_dir

    def propose(self, cycle, incumbent, iteration, n):
        from forge.abcycles.driver import Proposal

        return [Proposal(f"{cycle}{iteration}-v{j}", f"mutation:{j}") for j in range(n)]

    def evaluate(self, cycle, prompts, iteration):
        return [0.5 + 0.1 * iteration] + [0.6 + 0.1 * iteration] * (len(prompts) - 1)

    def half_bake(self, cycle, prompt, iteration):
        return 0.5

    def full_bake(self, cycle, prompt, iteration):
        return 1.0

    def checkpoint(self, iteration):
        from forge.artifacts import save_model_dir

        save_model_dir(self.model, self.tokenizer, self.work_dir / f"iter_{iteration:03d}", phase="test")


def _phase6_after_two_iterations(tmp_path):
    """A Phase 6 context whose A/B state and iteration checkpoints are those of two finished iterations."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from forge.abcycles.driver import ABCycleConfig, run_ab_cycles
    from forge.config import PipelineConfig
    from forge.data.tokenizer import train_bpe_tokenizer
    from forge.phases.base import PhaseContext

    ctx = PhaseContext(config=PipelineConfig(), run_dir=tmp_path, phase_dir=tmp_path / "tool_persona", inputs={})
    tokenizer = train_bpe_tokenizer(["a small text to train on, twice."] * 8, vocab_size=300)
    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=len(tokenizer), n_positions=32))
    state_path = ctx.work_dir / "ab_state.json"
    run_ab_cycles(CheckpointingHooks(model, tokenizer, ctx.work_dir),
                  ABCycleConfig(max_iterations=2, half_bake_initial_tool_prompt=False),
                  initial_prompts={"A": "Use tools.", "B": "I check."}, state_path=state_path)
    return ctx, state_path


def test_phase6_resumes_after_a_sound_checkpoint_and_restarts_after_a_bad_one(tmp_path, capsys):
    from forge.artifacts import save_model_dir
    from forge.phases.tool_persona import resume_iteration

    ctx, state_path = _phase6_after_two_iterations(tmp_path / "sound")
    assert resume_iteration(ctx, state_path) == 1

    ctx, state_path = _phase6_after_two_iterations(tmp_path / "nan")
    model, tokenizer = load_model_dir(ctx.work_dir / "iter_001")
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    save_model_dir(model, tokenizer, ctx.work_dir / "iter_001", phase="test")  # consistent hashes, NaN weights
    assert resume_iteration(ctx, state_path) is None
    assert "non-finite weights in" in capsys.readouterr().out
    assert not state_path.exists() and not list(ctx.work_dir.glob("iter_*"))  # the cycles start over

    ctx, state_path = _phase6_after_two_iterations(tmp_path / "truncated")
    weights = ctx.work_dir / "iter_001" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16])
    assert resume_iteration(ctx, state_path) is None
    assert "does not match its SHA-256" in capsys.readouterr().out

    ctx, state_path = _phase6_after_two_iterations(tmp_path / "garbled")
    state_path.write_text("{not json")
    assert resume_iteration(ctx, state_path) is None
    assert "is not an A/B cycle state file" in capsys.readouterr().out and not state_path.exists()


def test_disk_full_checkpoint_write_fails_clearly_and_keeps_the_last_good_one(tmp_path, monkeypatch):
    import errno

    import forge.artifacts
    from forge.artifacts import StorageFull

    real_fsync, calls = os.fsync, []

    def fsync_until_full(fd):
        calls.append(fd)
        if len(calls) > 3:  # the initial checkpoint and steps 1-2 are written, step 3's is not
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(forge.artifacts.os, "fsync", fsync_until_full)
    with pytest.raises(StorageFull, match=r"no space left to write .*checkpoint.pt .*previous checkpoint.pt"):
        _train(tmp_path)
    monkeypatch.setattr(forge.artifacts.os, "fsync", real_fsync)
    ckpt = tmp_path / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]  # no temp file
    assert _resume(tmp_path).step == 2
    assert _train(tmp_path)["steps"] == 4  # and training resumes from there


def test_disk_full_model_directory_write_keeps_the_previous_directory(tmp_path, monkeypatch):
    import errno

    import forge.artifacts
    from forge.artifacts import StorageFull, save_model_dir, verify_model_dir

    model = _tiny_training(tmp_path)[0]
    out = save_model_dir(model, None, tmp_path / "model", phase="test")
    before = read_json(out / "manifest.json")["digest"]

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(forge.artifacts.os, "fsync", full)  # the manifest, written last, finds the disk full
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # a write that went through would change the directory
    with pytest.raises(StorageFull, match="no space left to write .*model .*previous model"):
        save_model_dir(model, None, out, phase="test")
    monkeypatch.undo()
    assert verify_model_dir(out) and read_json(out / "manifest.json")["digest"] == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ------------------------------------------------------------------------------------------ the driver

def test_sigterm_stops_the_driver_cleanly_and_the_same_command_resumes(tmp_path, shared_data, ray_session):
    import subprocess
    import sys

    from forge.config import load_pipeline_config
    from test_pipeline import SMALL

    overrides = [*SMALL, f"data.data_dir={shared_data}", *COGNATE_ONLY]
    cmd = [sys.executable, "-m", "forge.pipeline", "--out", str(tmp_path)]
    for item in overrides:
        cmd += ["--set", item]
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    phase_dir = tmp_path / "tiny" / "cognate"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            metrics = phase_dir / "metrics.jsonl"
            if metrics.is_file() and any(m.get("step", 0) >= 3 for m in read_metrics(metrics)):
                break
            assert proc.poll() is None, "the run ended before it could be stopped"
            time.sleep(0.2)
        else:
            pytest.fail("no training progress within 300 s")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert f"stopped by SIGTERM during phase 'cognate' (its checkpoints are kept in {phase_dir / 'work'})" in stderr
    assert "Run the same command again to resume." in stderr
    manifest = read_json(phase_dir / "manifest.json")
    assert manifest["status"] == "stopped" and "outputs" not in manifest

    run_pipeline(load_pipeline_config("tiny", overrides=overrides, out_dir=str(tmp_path)))
    resumed = [m["train/resumed_at_step"] for m in read_metrics(phase_dir / "metrics.jsonl")
               if "train/resumed_at_step" in m]
    assert resumed and max(resumed) >= 2, "the second run should resume from a checkpoint, not step 0"
    assert read_json(phase_dir / "manifest.json")["status"] == "complete"


@pytest.mark.slow
def test_kill_resume_harness_survives_every_interruption_of_phase_1(tmp_path, shared_data):
    """benchmarks/scripts/kill_resume.py on Phase 1: SIGTERM then SIGKILL of the driver at random moments, each
    followed by the same command (356 s on 2 cores at load 12: a reference run, two interrupted starts, one
    to completion)."""
    import json
    import subprocess
    import sys

    out = tmp_path / "kill_resume.json"
    env = dict(os.environ, FORGE_DATA_DIR=str(shared_data))
    env.pop("RAY_ADDRESS", None)
    subprocess.run([sys.executable, "benchmarks/scripts/kill_resume.py", "--out", str(tmp_path / "runs"),
                    "--json", str(out), "--phases", "cognate", "--signals", "TERM,KILL", "--seed", "1"],
                   env=env, cwd=Path(__file__).resolve().parent.parent, check=False, timeout=1800)
    result = json.loads(out.read_text())
    assert result["tried"] == 2 and result["survived"] == 2, json.dumps(result["rounds"], indent=1)
    assert result["final"]["exit_code"] == 0 and not result["final"]["problems"]
    # Phase 1 is deterministic: resumed from its checkpoints, it writes the reference run's models.
    assert result["outputs_equal_to_reference"] == {"cognate": True}


@pytest.mark.slow
def test_two_nodes_run_actors_on_both_and_survive_losing_the_worker_node(tmp_path, shared_data):
    """benchmarks/scripts/two_node.py: a head and a second raylet on this machine (``ray start``), Phase 1 of the
    shrunken pipeline through ``ray job submit`` twice: actors on both nodes, then the worker node lost mid-phase."""
    import json
    import subprocess
    import sys

    out = tmp_path / "two_node.json"
    env = dict(os.environ, FORGE_DATA_DIR=str(shared_data))
    env.pop("RAY_ADDRESS", None)
    subprocess.run([sys.executable, "benchmarks/scripts/two_node.py", "--out", str(tmp_path / "runs"),
                    "--json", str(out)], env=env, cwd=Path(__file__).resolve().parent.parent, check=False,
                   timeout=3600)
    result = json.loads(out.read_text())
    assert result["undisturbed"]["job_succeeded"] and result["undisturbed"]["nodes_used"] == ["head", "worker"]
    lost = result["node_lost"]
    assert lost["trainer_on_lost_node"] is not None and lost["processes_killed"] >= 1
    assert lost["job_succeeded"] and lost["phase_status"] == "complete"
    # The trainer of the lost node came back on the head node and finished all its steps.
    assert lost["actor_nodes"][lost["trainer_on_lost_node"]][-1] == "head"
    assert lost["steps"] == result["undisturbed"]["steps"]
