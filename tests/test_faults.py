"""Faults a cluster brings: an actor process killed with SIGKILL is restarted and resumes from its checkpoint;
one that keeps dying fails its phase with a message naming it, its attempts and its log."""
import os
import signal
import threading
import time

import pytest

from actors.restarts import ATTEMPTS_FILE, ActorLost, read_attempts
from forge.artifacts import read_json
from forge.pipeline import run_pipeline
from forge.tracking import read_metrics
from test_pipeline import small_config

COGNATE_ONLY = ["phases=[cognate]", "cognate.train.max_steps_per_epoch=6"]  # model a: 18 steps, b: 12


class KillAtStep(threading.Thread):
    """Watches a phase's metrics and SIGKILLs the actor process of ``source`` once it has logged ``step``."""

    def __init__(self, phase_dir, source: str, attempts_file, step: int, timeout: float = 300):
        super().__init__(daemon=True)
        self.phase_dir, self.source, self.attempts_file = phase_dir, source, attempts_file
        self.step, self.timeout = step, timeout
        self.killed: dict | None = None  # {"pid", "step"} once done

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
                self.killed = {"pid": attempts[-1]["pid"], "step": step}
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
    assert manifest["summary"]["models"]["a"]["steps"] == 18 and manifest["summary"]["models"]["b"]["steps"] == 12
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
    assert steps_after and min(steps_after) == resumed[0] + 1 and max(steps_after) == 18


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
