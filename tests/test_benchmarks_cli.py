"""``python -m benchmarks``: runs on a saved model directory, prints a table, writes JSON; usage errors exit 2."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from benchmarks.__main__ import main
from forge.artifacts import save_model_dir
from forge.data.tokenizer import load_gpt2_tokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tokenizer = load_gpt2_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=len(tokenizer), n_positions=256))
    return save_model_dir(model, tokenizer, tmp_path_factory.mktemp("cli") / "model", phase="test")


def test_cli_prints_a_table_and_writes_json(model_dir, shared_data, tmp_path):
    out = tmp_path / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--model", str(model_dir), "--tasks", "arc_easy,gsm8k", "--limit", "3",
         "--num-fewshot", "0", "--max-new-tokens", "4", "--data-dir", str(shared_data), "--json", str(out),
         "--prompt", "You are a helpful assistant."],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "arc_easy" in completed.stdout and "acc_norm=" in completed.stdout
    report = json.loads(out.read_text())
    assert set(report["tasks"]) == {"arc_easy", "gsm8k"}
    assert report["tasks"]["arc_easy"]["n_items"] == 3 and report["tasks"]["gsm8k"]["n_items"] == 3
    assert 0.0 <= report["tasks"]["arc_easy"]["metrics"]["acc"] <= 1.0
    assert report["wall_s"] > 0 and report["settings"]["prompt"] == "You are a helpful assistant."


@pytest.mark.parametrize("args, message", [
    (["--tasks", "arc_easy,nope"], "unknown task(s) nope"),
    (["--tasks", "arc_easy", "--data-dir", "/nonexistent/data"], "does not exist"),
    (["--tasks", "arc_easy", "--limit", "0"], "--limit must be"),
])
def test_cli_usage_errors_exit_2_with_the_fix(model_dir, shared_data, args, message, capsys):
    if "--data-dir" not in args:
        args = [*args, "--data-dir", str(shared_data)]
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(model_dir), *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_without_data_folder_names_the_variable(model_dir, monkeypatch, capsys):
    monkeypatch.delenv("FORGE_DATA_DIR", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(model_dir), "--tasks", "arc_easy"])
    assert exit_info.value.code == 2
    assert "FORGE_DATA_DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", str(model_dir.parent), "--tasks", "arc_easy", "--data-dir", "."])
    assert "no config.json" in capsys.readouterr().err
