"""benchmarks/scripts/gpu_check.py runs on CPU at tiny sizes, so the GPU check cannot rot between GPU runs."""
import json
import subprocess
import sys

from forge.config import load_pipeline_config
from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "scripts" / "gpu_check.py"


def test_gpu_check_training_steps_at_tiny_sizes(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--json", str(out), "--tiny", "--skip-pipeline",
                           "--models", "cognate-reasoning,gpt2", "--variants", "eager", "--steps", "1",
                           "--warmup", "1"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    payload = json.loads(out.read_text())
    assert payload["tiny"] and "pipeline" not in payload
    entries = {(e["model"], e["precision"]): e for e in payload["train_step"]}
    assert set(entries) == {(m, p) for m in ("cognate-reasoning", "gpt2") for p in ("float32", "mixed")}
    for entry in entries.values():
        assert "error" not in entry, entry
        assert entry["tokens_per_s"] > 0 and 0 < entry["mfu"] < 1 and entry["peak_rss_extra_gib"] > 0
    assert entries[("cognate-reasoning", "mixed")]["autocast_dtype"] == "torch.bfloat16"
    assert entries[("cognate-reasoning", "float32")]["planner_estimate_gib"] > 0
    assert {r["precision"] for r in payload["ratios"]} == {"float32", "mixed"}


def test_gpu_check_pipeline_overrides_are_a_valid_gtx1660_config():
    sys.path.insert(0, str(SCRIPT.parent))
    from gpu_check import PIPELINE_SHRINK

    config = load_pipeline_config("gtx1660", overrides=[*PIPELINE_SHRINK, "ray.gpu_memory_gib=6"])
    assert [m.ltm_slots for m in config.cognate.models] == [2048, 8192, 2048]
    assert config.cognate.architecture["activation_checkpointing"] == "layer"
    assert config.ray.gpu_memory_gib == 6 and config.cognate.train.max_steps_per_epoch == 2
    tiny = [o for o in PIPELINE_SHRINK if not o.startswith("cognate.models=")]
    assert load_pipeline_config("tiny", overrides=tiny).cognate.train.batch_size == 8
