"""Merge library: each technique against a hand computation, layer moves, combos, diversity, CLI, mergekit."""
import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast)

from forge.artifacts import verify_model_dir
from forge.merge import (MERGE_METHODS, ComboParams, LayerStructureError, MergeError, apply_combo, combo_methods,
                         infer_layer_layout, merge, weight_space_diversity)
from forge.merge.__main__ import main as cli_main
from forge.merge.__main__ import parse_set_value
from forge.merge.methods import drop_and_rescale, trim_to_density
from forge.models import CognateConfig, CognateForCausalLM

REPO = Path(__file__).resolve().parent.parent


def llama_config(vocab: int = 64) -> LlamaConfig:
    return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2, vocab_size=vocab)


def perturbed(state_dict: dict, scale: float, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in state_dict.items()}


@pytest.fixture(scope="module")
def llamas():
    """A base Llama and three 'fine-tunes' of it (base + independent perturbations)."""
    torch.manual_seed(0)
    base = LlamaForCausalLM(llama_config()).state_dict()
    return base, [perturbed(base, 0.05, seed) for seed in (1, 2, 3)]


def tiny_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


# ------------------------------------------------------------------------------------------ techniques

def test_linear_is_the_normalized_weighted_average():
    a, b = torch.tensor([1.0, 2.0, -4.0]), torch.tensor([3.0, 0.0, 4.0])
    assert torch.allclose(MERGE_METHODS["linear"].fn([a, b], weights=[1, 3]), (a + 3 * b) / 4)
    assert torch.allclose(MERGE_METHODS["linear"].fn([a, b], weights=[1, 3], normalize=False), a + 3 * b)


def test_slerp_follows_the_arc_and_falls_back_to_linear():
    slerp = MERGE_METHODS["slerp"].fn
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert torch.allclose(slerp([a, b], t=0.0), a) and torch.allclose(slerp([a, b], t=1.0), b)
    mid = slerp([a, b], t=0.5)
    assert torch.allclose(mid, torch.tensor([math.sqrt(0.5)] * 2))  # on the unit circle, not the chord
    third = slerp([a, b], t=1 / 3)
    assert math.isclose(math.atan2(third[1], third[0]), math.pi / 6, rel_tol=1e-5)
    # parallel tensors: linear interpolation
    assert torch.allclose(slerp([a, 2 * a], t=0.25), 1.25 * a)
    # three models fold in like a running mean: parallel inputs give the weighted mean exactly
    assert torch.allclose(slerp([a, 2 * a, 6 * a], weights=[1, 1, 2]), (1 + 2 + 12) / 4 * a)
    with pytest.raises(MergeError, match="exactly two"):
        slerp([a, b, a], t=0.5)


def test_slerp_stays_accurate_on_large_tensors():
    """A single float32 reduction over 3M entries is off by ~6e-5; the result must be within 1e-6 of float64."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(3_000_000, generator=gen) * 0.02 + 0.001 for _ in range(2))
    slerp = MERGE_METHODS["slerp"].fn
    exact = slerp([a.double(), b.double()], t=0.3)
    assert float((slerp([a, b], t=0.3).double() - exact).norm() / exact.norm()) < 1e-6


def test_task_arithmetic_adds_scaled_task_vectors():
    base = torch.tensor([1.0, 1.0])
    m1, m2 = torch.tensor([2.0, 1.0]), torch.tensor([1.0, 3.0])
    out = MERGE_METHODS["task_arithmetic"].fn([m1, m2], base, weights=[1.0, 0.5], scale=2.0)
    assert torch.allclose(out, base + 2.0 * ((m1 - base) + 0.5 * (m2 - base)))


def test_ties_trims_elects_sign_and_averages_agreeing_entries():
    base = torch.zeros(4)
    deltas = [torch.tensor([1.0, -2.0, 0.5, 3.0]), torch.tensor([-1.5, -1.0, 2.0, 0.1]),
              torch.tensor([2.0, 1.0, -3.0, 0.2])]
    assert torch.equal(trim_to_density(deltas[1], 0.5), torch.tensor([-1.5, 0.0, 2.0, 0.0]))
    # trimmed: [0,-2,0,3], [-1.5,0,2,0], [2,0,-3,0]; sign sums + - - +; agreeing means:
    out = MERGE_METHODS["ties"].fn(deltas, base, density=0.5)
    assert torch.allclose(out, torch.tensor([2.0, -2.0, -3.0, 3.0]))
    with pytest.raises(MergeError, match="density"):
        MERGE_METHODS["ties"].fn(deltas, base, density=0.0)


def test_dare_drops_at_random_rescales_and_is_seeded():
    delta = torch.randn(20_000, generator=torch.Generator().manual_seed(0))
    dropped = drop_and_rescale(delta, 0.3, torch.Generator().manual_seed(5), "inverse")
    kept = dropped != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.015  # ~4.6 sigma of a Bernoulli(0.3) mean over 20k
    assert torch.allclose(dropped[kept], delta[kept] / 0.3)  # survivors rescaled by 1 / (1 - p)
    l1 = drop_and_rescale(delta, 0.3, torch.Generator().manual_seed(5), "l1")
    assert torch.allclose(l1.abs().sum(), delta.abs().sum()) and torch.equal(l1 != 0, kept)

    base = {"w": torch.zeros(1000), "v": torch.ones(10)}
    models = [{"w": torch.randn(1000), "v": torch.rand(10)} for _ in range(2)]
    first = merge("dare", models, base=base, density=0.5, seed=7)
    assert torch.equal(first["w"], merge("dare", models, base=base, density=0.5, seed=7)["w"])
    assert not torch.equal(first["w"], merge("dare", models, base=base, density=0.5, seed=8)["w"])
    # tensors get their own generator: merging a subset gives the same draws
    alone = merge("dare", [{"w": m["w"]} for m in models], base={"w": base["w"]}, density=0.5, seed=7)
    assert torch.equal(alone["w"], first["w"])
    # density 1 keeps everything: plain task arithmetic
    assert torch.allclose(merge("dare", models, base=base, density=1.0)["w"],
                          merge("task_arithmetic", models, base=base)["w"])


def test_tied_tensors_are_merged_once_and_stay_identical():
    def model(seed):
        w = torch.randn(8, 4, generator=torch.Generator().manual_seed(seed))
        return {"embed.weight": w, "lm_head.weight": w}  # aliased, like tied embeddings in state_dict()

    models = [model(1), model(2)]
    merged = merge("dare", models, base=model(0), density=0.5, seed=3)
    assert torch.equal(merged["embed.weight"], merged["lm_head.weight"])


def test_merge_rejects_bad_requests(llamas):
    base, (m1, m2, _) = llamas
    with pytest.raises(MergeError, match="unknown merge method 'average'.*linear"):
        merge("average", [m1, m2])
    with pytest.raises(MergeError, match="needs a base"):
        merge("ties", [m1, m2])
    with pytest.raises(MergeError, match="no parameter.*'densty'"):
        merge("ties", [m1, m2], base=base, densty=0.5)
    with pytest.raises(MergeError, match="one weight per model"):
        merge("linear", [m1, m2], weights=[1.0])
    wider = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, vocab_size=64)).state_dict()
    with pytest.raises(MergeError, match="different architectures.*embed_tokens"):
        merge("linear", [m1, wider])
    other_vocab = LlamaForCausalLM(llama_config(vocab=80)).state_dict()
    with pytest.raises(MergeError, match="different vocabularies"):
        merge("linear", [m1, other_vocab])
    deeper = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                          num_attention_heads=2, num_key_value_heads=2, vocab_size=64)).state_dict()
    with pytest.raises(MergeError, match="different architecture.*missing.*layers.2"):
        merge("linear", [deeper, m1])


# ------------------------------------------------------------------------------------------ layer moves

def test_layer_layout_is_inferred_from_names():
    llama = infer_layer_layout(LlamaForCausalLM(llama_config()).state_dict())
    assert (llama.prefix, llama.num_layers) == ("model.layers", 2)
    assert "model.embed_tokens.weight" in llama.other_keys and "self_attn.o_proj.weight" in llama.layer_suffixes[1]
    gpt2 = infer_layer_layout(GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=3, n_head=2, vocab_size=64)).state_dict())
    assert (gpt2.prefix, gpt2.num_layers) == ("transformer.h", 3)
    nested = infer_layer_layout(["model.layers.0.mlp.experts.0.w", "model.layers.0.mlp.experts.1.w",
                                 "model.layers.1.mlp.experts.0.w", "model.layers.1.mlp.experts.1.w", "head.w"])
    assert nested.prefix == "model.layers" and nested.layer_suffixes[1] == ("mlp.experts.0.w", "mlp.experts.1.w")

    with pytest.raises(LayerStructureError, match="cannot find numbered decoder layers.*layer_prefix"):
        infer_layer_layout(["embed.weight", "fc.0.weight", "fc.1.weight"])
    two_stacks = ["encoder.layers.0.w", "encoder.layers.1.w", "decoder.layers.0.w"]
    with pytest.raises(LayerStructureError, match="several.*decoder.layers.*encoder.layers"):
        infer_layer_layout(two_stacks)
    assert infer_layer_layout(two_stacks, layer_prefix="encoder.layers").num_layers == 2
    with pytest.raises(LayerStructureError, match=r"numbered \[0, 2\]"):
        infer_layer_layout(["model.layers.0.w", "model.layers.2.w"])


def test_frankenmerge_takes_each_layer_from_the_pattern(llamas):
    base, models = llamas
    merged = merge("frankenmerge", models, base=base, pattern=[2, 0])
    layout = infer_layer_layout(merged)
    for layer, source in ((0, 2), (1, 0)):
        for key in layout.layer_keys(layer):
            assert torch.equal(merged[key], models[source][key])
    for key in layout.other_keys:
        assert torch.equal(merged[key], base[key])
    with pytest.raises(MergeError, match="outside 0..2"):
        merge("frankenmerge", models, pattern=[0, 3])


def test_dfs_places_any_layer_anywhere_and_scales_its_residual_output(llamas):
    _, models = llamas
    merged = merge("dfs", models, path=[(1, 1), (2, 1)], scales=[0.5, 1.0])
    layout = infer_layer_layout(merged)
    for suffix in layout.layer_suffixes[0]:
        source = models[1][layout.key(1, suffix)]
        factor = 0.5 if suffix in ("self_attn.o_proj.weight", "mlp.down_proj.weight") else 1.0
        assert torch.equal(merged[layout.key(0, suffix)], source * factor), suffix
    for suffix in layout.layer_suffixes[1]:
        assert torch.equal(merged[layout.key(1, suffix)], models[2][layout.key(1, suffix)])
    with pytest.raises(MergeError, match="one .* per position"):
        merge("dfs", models, path=[(0, 0)])
    with pytest.raises(MergeError, match="no.*residual output projection|none of its modules"):
        merge("dfs", models, path=[(0, 0), (1, 1)], scales=[2.0, 1.0], residual_outputs=("nothing",))


def test_dfs_scale_zero_removes_the_layers_from_the_residual_stream(llamas):
    """With every layer's residual write scaled to 0 the network is embed -> final norm -> head."""
    _, models = llamas
    merged = merge("dfs", models[:2], path=[(0, 0), (1, 1)], scales=[0.0, 0.0])
    model = LlamaForCausalLM(llama_config()).eval()
    model.load_state_dict(merged)
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        logits = model(ids).logits
        expected = model.lm_head(model.model.norm(model.model.embed_tokens(ids)))
    assert torch.allclose(logits, expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------- combos

def test_combo_ids_map_to_the_three_stage_choices():
    assert combo_methods(0) == ("linear", "ties", "frankenmerge")
    assert combo_methods(0b101) == ("slerp", "ties", "dfs")
    assert combo_methods(7) == ("slerp", "dare", "dfs")
    assert len({combo_methods(i) for i in range(8)}) == 8
    with pytest.raises(MergeError, match="0..7"):
        combo_methods(8)


def test_all_eight_combos_differ_are_finite_and_reproducible(llamas):
    _, parents = llamas
    results = [apply_combo(parents, combo_id, seed=11) for combo_id in range(8)]
    for i, j in itertools.combinations(range(8), 2):
        assert any(not torch.equal(results[i][k], results[j][k]) for k in results[i]), (i, j)
    model = LlamaForCausalLM(llama_config()).eval()
    for merged in results:
        model.load_state_dict(merged)
        with torch.no_grad():
            assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
    again = apply_combo(parents, 3, seed=11)
    assert all(torch.equal(again[k], results[3][k]) for k in again)
    assert any(not torch.equal(apply_combo(parents, 3, seed=12)[k], again[k]) for k in again)


def test_combo_params_drive_every_stage(llamas):
    _, parents = llamas
    params = ComboParams(weights=(1.0, 1.0, 1.0), density=1.0, task_scale=0.0, layer_sources=(0, 0))
    # task_scale 0 and layers from the stage-2 model: the result is the stage-1 linear merge exactly
    out = apply_combo(parents, 0, params)
    assert all(torch.allclose(out[k], merge("linear", parents)[k]) for k in out)
    # changing any one field changes the model
    for changed in (ComboParams(weights=(3.0, 1.0, 1.0), density=1.0, task_scale=0.0, layer_sources=(0, 0)),
                    ComboParams(weights=(1.0, 1.0, 1.0), density=0.5, task_scale=1.0, layer_sources=(0, 0)),
                    ComboParams(weights=(1.0, 1.0, 1.0), density=1.0, task_scale=0.0, layer_sources=(0, 2))):
        other = apply_combo(parents, 0, changed)
        assert any(not torch.equal(other[k], out[k]) for k in out), changed
    dfs = apply_combo(parents, 1, ComboParams(layer_sources=(1, 2), layer_indices=(1, 0), layer_scales=(0.5, 1.0)))
    assert torch.equal(dfs["model.layers.1.mlp.up_proj.weight"], parents[1]["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(dfs["model.layers.0.mlp.down_proj.weight"],
                       parents[0]["model.layers.1.mlp.down_proj.weight"] * 0.5)


def test_combos_on_tiny_cognate_models_load():
    config = CognateConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, ltm_slots=16, memory_dim=8, memory_chunk_size=8, sliding_window=16)
    parents = []
    for seed in (42, 43, 44):
        torch.manual_seed(seed)
        parents.append(CognateForCausalLM(config).state_dict())
    assert 0 < weight_space_diversity(parents) < 1  # independent inits: distinct, yet sharing the norm weights
    model = CognateForCausalLM(config)
    for combo_id in (0, 7):
        merged = apply_combo(parents, combo_id, seed=1)
        assert torch.equal(merged["lm_head.weight"], merged["model.embed_tokens.weight"])  # still tied
        assert all(torch.isfinite(t).all() for t in merged.values())
        model.load_state_dict(merged, strict=True)  # (a Cognate forward is too slow for this file's budget)


def test_weight_space_diversity_is_measured_from_the_weights(llamas):
    base, models = llamas
    a = {"w": torch.tensor([1.0, 0.0]), "n": torch.tensor([2])}
    b = {"w": torch.tensor([0.0, 1.0]), "n": torch.tensor([5])}  # integer tensors are ignored
    assert weight_space_diversity([a, a]) == 0.0
    assert math.isclose(weight_space_diversity([a, b]), 1.0)  # orthogonal, equal norms
    assert math.isclose(weight_space_diversity([a, {"w": -a["w"], "n": a["n"]}]), math.sqrt(2))
    doubled = [{k: 2 * v for k, v in m.items()} for m in models]
    assert math.isclose(weight_space_diversity(models), weight_space_diversity(doubled), rel_tol=1e-9)
    close = [perturbed(base, 0.01, s) for s in (1, 2, 3)]
    assert 0 < weight_space_diversity(close) < weight_space_diversity(models)
    with pytest.raises(ValueError, match="at least two"):
        weight_space_diversity([a])


# ------------------------------------------------------------------------------------------------- CLI

def test_parse_set_values():
    assert parse_set_value("0.5") == 0.5 and parse_set_value("3") == 3 and parse_set_value("true") is True
    assert parse_set_value("0.2,0.8") == [0.2, 0.8] and parse_set_value("1,") == [1]
    assert parse_set_value("0:1,2:0") == [(0, 1), (2, 0)] and parse_set_value("l1") == "l1"


def test_cli_merges_model_directories(tmp_path, llamas, capsys):
    base, models = llamas
    tokenizer = tiny_tokenizer(["hello", "world"])
    dirs = []
    for name, state in (("base", base), ("a", models[0]), ("b", models[1])):
        model = LlamaForCausalLM(llama_config())
        model.load_state_dict(state)
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
        dirs.append(str(tmp_path / name))

    out = tmp_path / "merged"
    assert cli_main(["--method", "ties", "--models", dirs[1], dirs[2], "--base", dirs[0], "--set", "density=0.4",
                     "--set", "weights=1.0,0.5", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(out)
    assert verify_model_dir(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["phase"] == "merge" and manifest["merge"]["params"] == {"density": 0.4, "weights": [1.0, 0.5]}
    expected = merge("ties", models[:2], base=base, density=0.4, weights=[1.0, 0.5])
    written = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(written[k], expected[k]) for k in written)
    reloaded = LlamaForCausalLM.from_pretrained(out)
    assert torch.equal(reloaded.state_dict()["model.layers.1.mlp.down_proj.weight"],
                       expected["model.layers.1.mlp.down_proj.weight"])
    assert PreTrainedTokenizerFast.from_pretrained(out).get_vocab() == tokenizer.get_vocab()

    # usage errors and unmergeable inputs: exit code 2 and a message naming the problem
    other_vocab = tmp_path / "other_vocab"
    LlamaForCausalLM(llama_config()).save_pretrained(other_vocab)
    tiny_tokenizer(["goodbye", "world"]).save_pretrained(other_vocab)
    bigger = tmp_path / "bigger"
    LlamaForCausalLM(llama_config(vocab=80)).save_pretrained(bigger)
    for argv, message in (
        (["--method", "linear", "--models", dirs[1], str(other_vocab), "--out", str(tmp_path / "x")],
         "different vocabularies"),
        (["--method", "linear", "--models", dirs[1], str(bigger), "--out", str(tmp_path / "x")],
         "different vocabularies"),
        (["--method", "ties", "--models", dirs[1], dirs[2], "--out", str(tmp_path / "x")], "needs a base"),
        (["--method", "linear", "--models", dirs[1], str(tmp_path / "missing"), "--out", str(tmp_path / "x")],
         "not a model directory"),
        (["--method", "linear", "--models", dirs[1], dirs[2], "--set", "weights", "--out", str(tmp_path / "x")],
         "NAME=VALUE"),
    ):
        assert cli_main(argv) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--method", "nope", "--models", dirs[1], "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert cli_main(["--list"]) == 0 and "dfs" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ mergekit agreement

def _mergekit_python() -> str | None:
    if os.environ.get("MERGEKIT_PYTHON"):
        return os.environ["MERGEKIT_PYTHON"]
    return sys.executable if importlib.util.find_spec("mergekit") else None


@pytest.mark.skipif(_mergekit_python() is None,
                    reason="mergekit not installed: set MERGEKIT_PYTHON to a venv's python that has it")
def test_agrees_with_mergekit(tmp_path):
    out = tmp_path / "agreement.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks/scripts/mergekit_agreement.py"),
                          "--mergekit-python", _mergekit_python(), "--hidden", "32", "--layers", "2",
                          "--vocab", "128", "--repeats", "1", "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    assert set(report["methods"]) == {"linear", "slerp", "task_arithmetic", "ties", "dare"}
    for method, row in report["methods"].items():
        assert row["kernel"]["max_relative_error"] <= 1e-6, method
        assert row["kernel"]["relative_change_from_a"] > 1e-3, method  # a real merge, not a copy
        if "end_to_end" in row:
            assert row["end_to_end"]["max_relative_error"] <= 1e-6, method
