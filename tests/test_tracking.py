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


def _wandb_records(path):
    """The protobuf records of an offline run's ``.wandb`` file: ':W&B' + magic + version, then LevelDB log
    records (7-byte header: CRC, length, type; full=1, first=2, middle=3, last=4) in 32 KiB blocks."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        left = block - position % block
        length, kind = struct.unpack("<HB", data[position + 4:position + 7])
        if left < 7 or (length == 0 and kind == 0):  # block trailer or zero padding
            position += left
            continue
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_a_finished_phase_logs_the_scoreboard_table_and_its_model_offline(tmp_path, monkeypatch):
    import json

    from transformers import GPT2Config, GPT2LMHeadModel

    from forge.artifacts import atomic_write_json, save_model_dir
    from forge.config import load_pipeline_config
    from forge.data.tokenizer import load_gpt2_tokenizer
    from forge.phases.scoring import SCOREBOARD_FILE, track_phase

    for variable in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):  # nothing outside tmp_path
        monkeypatch.setenv(variable, str(tmp_path / variable.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=50257))
    output = save_model_dir(model, load_gpt2_tokenizer(), run_dir / "bitnet" / "model", phase="bitnet")
    figure = {"value": 41.5, "low": 39.0, "high": 44.0}
    atomic_write_json(run_dir / SCOREBOARD_FILE, {"phases": {"bitnet": {
        "models": {"model": {"metrics": {"heldout_perplexity": figure}, "path": "bitnet/model"}},
        "gate": {"model": {"worse": False, "best_input": "model"}}, "handed_on": {"model": "bitnet/model"}}}})
    config = load_pipeline_config("tiny")
    assert config.tracking.wandb_mode == "offline"  # the default: nothing leaves the machine unless asked
    track_phase(config, run_dir, "bitnet", {"model": output})

    [wandb_file] = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    deadline = time.time() + 60
    while not any(r.WhichOneof("record_type") == "exit" for r in _wandb_records(wandb_file)):
        assert time.time() < deadline, "the offline wandb run was never closed"
        time.sleep(0.5)
    records = list(_wandb_records(wandb_file))
    artifacts = {r.artifact.name: r.artifact for r in records if r.WhichOneof("record_type") == "artifact"}
    model_artifact = artifacts["bitnet-model"]
    assert model_artifact.type == "model" and json.loads(model_artifact.metadata)["phase"] == "bitnet"
    assert {"model.safetensors", "config.json", "manifest.json"} <= {e.path for e in model_artifact.manifest.contents}
    table_keys = {item.nested_key[0] for r in records if r.WhichOneof("record_type") == "history"
                  for item in r.history.item if item.nested_key and item.nested_key[-1] == "_type"
                  and item.value_json == '"table-file"'}
    assert table_keys == {"scoreboard/phases"}
    [table_file] = wandb_file.parent.glob("files/media/table/scoreboard/phases_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["phase", "model", "heldout_perplexity", "heldout_perplexity_low",
                                "heldout_perplexity_high", "gate", "handed_on"]
    assert table["data"] == [["bitnet", "model", 41.5, 39.0, 44.0, "passed", "bitnet/model"]]
    # The same, without wandb, in the run's metrics.jsonl.
    [local] = [m for m in read_metrics(run_dir / "metrics.jsonl") if "scoreboard/phases" in m]
    assert local["scoreboard/phases"]["rows"] == table["data"]
    assert [m["artifact"] for m in read_metrics(run_dir / "metrics.jsonl") if "artifact" in m] == ["bitnet-model"]


def test_metrics_tail_returns_each_complete_record_once(tmp_path):
    from forge.tracking import MetricsTail

    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.new_records() == []  # not written yet
    path.write_text('{"step": 1}\n{"step": 2}\n{"st')  # another process is writing the third line
    assert tail.new_records() == [{"step": 1}, {"step": 2}]
    with open(path, "a") as handle:
        handle.write('ep": 3}\n')
    assert tail.new_records() == [{"step": 3}] and tail.new_records() == []
