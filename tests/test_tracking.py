"""Metrics and artifacts: metrics.jsonl always, wandb (offline here) when it is on."""
import time

import pytest

from forge.tracking import Tracker, TrackingConfig, read_metrics


def test_an_artifact_is_recorded_locally_and_logged_to_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    prompts = tmp_path / "prompts.json"
    prompts.write_text('{"0": {"scored": []}}')
    tracker = Tracker(tmp_path / "phase", name="artifact-test", config=TrackingConfig(wandb_mode="offline"))
    tracker.log_artifact("phase6-prompts-iter-0", "prompts", prompts, {"iteration": 0, "cycle": "A"})
    with pytest.raises(FileNotFoundError, match="phase6-model-iter-0.*does not exist"):
        tracker.log_artifact("phase6-model-iter-0", "model", tmp_path / "missing")
    tracker.finish()
    [record] = [m for m in read_metrics(tmp_path / "phase" / "metrics.jsonl") if "artifact" in m]
    assert record["artifact"] == "phase6-prompts-iter-0" and record["artifact_type"] == "prompts"
    assert record["cycle"] == "A" and record["artifact_path"] == str(prompts)
    # The offline wandb run holds the artifact: its name is in the run's record file, which wandb's service
    # process may still be writing when finish() returns.
    runs = list((tmp_path / "phase" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    deadline = time.time() + 60
    while b"phase6-prompts-iter-0" not in runs[0].read_bytes():
        assert time.time() < deadline, "the artifact never reached the offline wandb run"
        time.sleep(0.5)
