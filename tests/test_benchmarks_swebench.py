"""SWE-bench adapter: official predictions format, patch extraction, a clear error without the harness."""
import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from benchmarks import swebench
from forge.data.readers import read_swebench
from forge.data.tokenizer import load_gpt2_tokenizer


def test_reference_patches_round_trip_through_the_predictions_file(shared_data, tmp_path):
    instances = read_swebench(shared_data, subset="lite")
    predictions = [{"instance_id": item["instance_id"], "model_patch": swebench.extract_patch(item["patch"])}
                   for item in instances]
    assert all(p["model_patch"] == item["patch"].rstrip() + "\n" for p, item in zip(predictions, instances))
    path = swebench.write_predictions(predictions, "gold", tmp_path / "preds.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [set(r) for r in records] == [{"instance_id", "model_name_or_path", "model_patch"}] * len(instances)
    assert [r["instance_id"] for r in records] == [item["instance_id"] for item in instances]
    with pytest.raises(ValueError, match="twice"):
        swebench.write_predictions(predictions + predictions[:1], "gold", tmp_path / "dup.jsonl")


def test_patch_extraction_from_model_text():
    text = "Here is the fix:\n```diff\n--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n+b\n```\nDone."
    assert swebench.extract_patch(text) == "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n+b\n"
    assert swebench.extract_patch("I cannot help with that.") == ""


def test_model_predictions_are_written_and_scoring_without_harness_fails_clearly(shared_data, tmp_path):
    tokenizer = load_gpt2_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=len(tokenizer), n_positions=2048))
    instances = read_swebench(shared_data, subset="lite")[:2]
    predictions = swebench.generate_predictions(model.eval(), tokenizer, instances, max_new_tokens=4)
    assert [p["instance_id"] for p in predictions] == [i["instance_id"] for i in instances]
    path = swebench.write_predictions(predictions, "tiny-gpt2", tmp_path / "preds.jsonl")
    problems = swebench.harness_problems()
    if problems:
        with pytest.raises(swebench.SWEBenchUnavailable, match="No score is reported"):
            swebench.run_harness(path, run_id="test")
    else:
        pytest.skip("Docker and swebench are available: the real harness would run (too slow for a unit test)")
