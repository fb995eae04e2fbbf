"""Model directories: atomic writes, manifests, and detection of unfinished or altered outputs."""
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from forge.artifacts import (ArtifactError, atomic_dir, load_model_dir, model_dir_problems, save_model_dir,
                             state_dict_hash, verify_model_dir)
from forge.data.tokenizer import load_gpt2_tokenizer


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=50257)
    return LlamaForCausalLM(config).eval()


def test_save_and_load_round_trip(tmp_path, tiny_llama):
    out = save_model_dir(tiny_llama, load_gpt2_tokenizer(), tmp_path / "m", phase="test", extra={"note": 1})
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["phase"] == "test" and manifest["note"] == 1
    assert {"config.json", "model.safetensors"} <= set(manifest["files"])
    assert verify_model_dir(out)
    model, tokenizer = load_model_dir(out)
    assert state_dict_hash(model.state_dict()) == state_dict_hash(tiny_llama.state_dict())
    assert len(tokenizer) == 50257
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(model(ids).logits, tiny_llama(ids).logits, rtol=0, atol=0)


def test_altered_truncated_and_unfinished_dirs_are_refused(tmp_path, tiny_llama):
    out = save_model_dir(tiny_llama, None, tmp_path / "m", phase="test")
    weights = out / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert any("SHA-256" in p for p in model_dir_problems(out))
    with pytest.raises(ArtifactError, match="model.safetensors"):
        load_model_dir(out)
    weights.write_bytes(data)
    assert verify_model_dir(out)
    (out / "manifest.json").unlink()
    assert "never finished" in model_dir_problems(out)[0]
    (out / "stray.txt").write_text("x")


def test_extra_file_is_reported(tmp_path, tiny_llama):
    out = save_model_dir(tiny_llama, None, tmp_path / "m", phase="test")
    (out / "stray.bin").write_bytes(b"\0")
    assert model_dir_problems(out) == ["stray.bin is not in the manifest"]


def test_atomic_dir_leaves_nothing_on_failure_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("second")
            raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_state_dict_hash_takes_scalars():
    a = {"scale": torch.tensor(1.5), "w": torch.ones(2)}
    b = {"scale": torch.tensor(1.25), "w": torch.ones(2)}
    assert state_dict_hash(a) != state_dict_hash(b)


def test_state_dict_hash_sees_a_single_changed_value(tiny_llama):
    state = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    before = state_dict_hash(state)
    name = next(iter(state))
    state[name].view(-1)[0] += 1e-3
    assert state_dict_hash(state) != before
