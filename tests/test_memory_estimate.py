"""The peak-memory estimate that sizes micro-batches and GPU shares, against measured peaks on CPU."""
import json
import os
import subprocess
import sys

import pytest

from cluster.resources import GiB
from forge.models import CognateConfig
from forge.models.size import estimate_step_memory_bytes
from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "scripts" / "cognate_step_memory.py"
ARCH = dict(hidden_size=128, intermediate_size=320, num_hidden_layers=2, num_attention_heads=4, sliding_window=64,
            ltm_slots=512, memory_dim=16, memory_chunk_size=32, act_max_steps=2, trm_refinements=2, act_threshold=0.99,
            pad_token_id=0, bos_token_id=None, eos_token_id=None)
VOCAB, BATCH, SEQ = 4096, 4, 256


def measured_step_bytes(arch: dict) -> float:
    """Peak RSS one forward + backward adds, in a fresh process (the benchmark script's memory worker)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run([sys.executable, str(SCRIPT), "--arch-json", json.dumps(arch), "--vocab", str(VOCAB),
                           "--batch", str(BATCH), "--seq-len", str(SEQ), "--worker", "cognate", "--measure", "memory"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["extra_gib"] * GiB


@pytest.mark.parametrize("mode", ["none", "layer"])
def test_estimate_is_within_25_percent_of_the_measured_peak(mode):
    arch = dict(ARCH, activation_checkpointing=mode)
    estimate = estimate_step_memory_bytes(CognateConfig(vocab_size=VOCAB, **arch), BATCH, SEQ)
    measured = measured_step_bytes(arch)
    assert 0.75 <= estimate / measured <= 1.25, (estimate / 2**20, measured / 2**20)


def test_estimate_follows_checkpointing_and_size():
    def estimate(**overrides):
        return estimate_step_memory_bytes(CognateConfig(vocab_size=VOCAB, **dict(ARCH, **overrides)), BATCH, SEQ)

    assert estimate(activation_checkpointing="layer") < estimate(activation_checkpointing="none") / 2
    assert estimate(activation_checkpointing="none", ltm_slots=2048) > 2 * estimate(activation_checkpointing="none")
    # what more slots add: every layer of every pass without checkpointing (8 here), about one layer with it
    growth = {mode: estimate(activation_checkpointing=mode, ltm_slots=2048) - estimate(activation_checkpointing=mode)
              for mode in ("none", "layer")}
    assert growth["layer"] < growth["none"] / 8
