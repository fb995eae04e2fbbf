"""EvoMerge: evolution rules (plain Python) and the phase on three tiny Cognate models, driven by Ray Tune."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from forge.artifacts import atomic_write_json, load_model_dir, read_json, save_model_dir, state_dict_hash
from forge.config import load_pipeline_config
from forge.data.heldout import HELDOUT, TEXT_FILES, read_texts
from forge.merge.evolve import (EvoMergeConfig, Genome, Recipe, Scored, combine_fitness, fitness_scores,
                          initial_population, next_generation, population_diversity, stop_reason)
from forge.merge import merge
from forge.phases.base import PhaseContext
from forge.phases.evomerge import evomerge_criteria
from forge.tracking import read_metrics

N_LAYERS = 2
SMALL_EVOMERGE = [
    "evomerge.max_generations=1", "evomerge.plateau_generations=5", "evomerge.heldout_max_chars=1500",
    "evomerge.perplexity_window=64", "evomerge.speed_batch=2", "evomerge.speed_seq_len=16",
    "evomerge.speed_repeats=1", "evomerge.accuracy_limit=4", "tracking.wandb_mode=disabled",
]


def _texts(n, seed):
    from forge.data.offline import arithmetic_word_problems, synthetic_qa

    return arithmetic_word_problems(n, seed) + synthetic_qa(n, seed)


def _tiny_parents(root):
    """Three tiny Cognate models (one config, different seeds), a few Adam steps each so they differ."""
    from forge.data.tokenizer import train_bpe_tokenizer
    from forge.models import CognateConfig, CognateForCausalLM

    train = _texts(60, seed=1)
    tokenizer = train_bpe_tokenizer(train, vocab_size=300, seed=0)
    ids = torch.tensor(tokenizer("\n\n".join(train), add_special_tokens=False)["input_ids"][: 8 * 32]).view(8, 32)
    dirs = {}
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        torch.manual_seed(seed)
        config = CognateConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=N_LAYERS,
                               num_attention_heads=2, intermediate_size=64, sliding_window=32,
                               max_position_embeddings=128, memory_dim=8, memory_chunk_size=16, act_max_steps=2,
                               trm_refinements=1, ltm_slots=16, pad_token_id=0, bos_token_id=0, eos_token_id=0)
        model = CognateForCausalLM(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for step in range(4):
            loss = model(input_ids=ids[step * 2:(step + 1) * 2], labels=ids[step * 2:(step + 1) * 2]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        dirs[name] = save_model_dir(model.eval(), tokenizer, root / "cognate" / f"model_{name}", phase="cognate")
    atomic_write_json(root / "cognate" / TEXT_FILES[HELDOUT], {"texts": _texts(20, seed=99)})
    return dirs


@pytest.fixture(scope="module")
def parents(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    return root, _tiny_parents(root)


def _context(root, dirs, extra=()):
    config = load_pipeline_config("tiny", overrides=[*SMALL_EVOMERGE, *extra], out_dir=str(root.parent))
    phase_dir = root / "evomerge"
    phase_dir.mkdir(exist_ok=True)
    return PhaseContext(config=config, run_dir=root, phase_dir=phase_dir, inputs=dirs,
                        texts={HELDOUT: root / "cognate" / TEXT_FILES[HELDOUT]})


@pytest.fixture(scope="module")
def phase_run(parents, ray_session):
    from forge.phases import evomerge

    root, dirs = parents
    saved = os.environ.pop("FORGE_DATA_DIR", None)  # no data folder: accuracy on generated items, keeps it short
    try:
        ctx = _context(root, dirs)
        result = evomerge.run(ctx)
    finally:
        if saved is not None:
            os.environ["FORGE_DATA_DIR"] = saved
    return ctx, result


def _state_dicts(dirs):
    return [load_model_dir(d)[0].state_dict() for d in dirs.values()]


# ----------------------------------------------------------------------------------- evolution rules

def _population(n=8):
    rng_genomes = initial_population(n_parents=3, n_layers=N_LAYERS, seed=5)
    return [Scored(g, fitness=0.1 * i) for i, g in enumerate(rng_genomes[:n])]


def test_next_generation_keeps_elites_merges_losers_and_mutates():
    config = EvoMergeConfig()
    population = _population()
    plan = next_generation(population, diversity=0.9, generation=1, n_parents=3, n_layers=N_LAYERS,
                           config=config, seed=0)
    assert [s.fitness for s in plan.kept] == pytest.approx([0.7, 0.6])
    assert len(plan.kept) + len(plan.children) == config.population_size and not plan.injected
    loser_merge = plan.children[0]
    assert loser_merge.origin == "loser_merge"
    assert set(loser_merge.recipes) == {population[0].genome.recipes[0], population[1].genome.recipes[0]}
    assert loser_merge.mix == pytest.approx((0.5, 0.5))
    mutants = plan.children[1:]
    assert {g.origin for g in mutants} == {"mutant"}
    elite_recipes = {s.genome.recipes[0] for s in plan.kept}
    assert all(m.recipes[0] not in elite_recipes for m in mutants)
    for mutant in mutants:
        recipe = mutant.recipes[0]
        assert sum(recipe.weights) == pytest.approx(1.0) and 0.1 <= recipe.density <= 1.0
        assert len(recipe.layer_sources) == N_LAYERS and all(0 <= s <= 3 for s in recipe.layer_sources)
    again = next_generation(population, 0.9, 1, 3, N_LAYERS, config, seed=0)
    assert again.children == plan.children  # seeded per generation: a resumed run plans the same children
    assert next_generation(population, 0.9, 2, 3, N_LAYERS, config, seed=0).children != plan.children


def test_low_diversity_injects_a_random_combo():
    plan = next_generation(_population(), diversity=0.1, generation=1, n_parents=3, n_layers=N_LAYERS,
                           config=EvoMergeConfig(), seed=0)
    assert plan.injected and plan.children[-1].origin == "injected"
    assert plan.children[-1].recipes[0].combo_id in range(8)


def test_loser_merges_stay_within_max_recipes():
    genomes = [s.genome for s in _population()]
    from forge.merge.evolve import merge_losers

    twice = merge_losers([merge_losers(genomes[:2], 3), merge_losers(genomes[2:4], 3)], max_recipes=3)
    assert len(twice.recipes) == 3 and sum(twice.mix) == pytest.approx(1.0)


def test_stop_rules():
    config = EvoMergeConfig(max_generations=10, plateau_generations=3, early_stop_improvement=0.3)
    assert stop_reason([1.0], config) is None
    assert stop_reason([1.0, 1.31], config) == "target_improvement"
    assert stop_reason([1.0, 1.1, 1.1, 1.1, 1.1], config) == "plateau"
    assert stop_reason([1.0, 1.05, 1.1, 1.15, 1.2], config) is None
    assert stop_reason([1.0] + [1.0 + 0.02 * i for i in range(1, 11)], config) == "max_generations"


def test_fitness_combines_measured_terms_and_drops_missing_ones():
    config = EvoMergeConfig()
    reference = {"tokens_per_s": 1000.0, "bytes": 4000.0}
    terms = {"perplexity": 64.0, "vocab_size": 4096.0, "tokens_per_s": 1000.0, "bytes": 4000.0}
    scores = fitness_scores(terms, reference)
    assert scores == pytest.approx({"perplexity": 0.5, "speed": 1.0, "size": 1.0})
    assert combine_fitness(scores, config) == pytest.approx((0.6 * 0.5 + 0.05 + 0.05) / 0.7)
    with_accuracy = fitness_scores({**terms, "accuracy": 0.25}, reference)
    assert combine_fitness(with_accuracy, config) == pytest.approx(0.6 * 0.5 + 0.3 * 0.25 + 0.1)
    worse = fitness_scores({**terms, "perplexity": 128.0}, reference)
    assert combine_fitness(worse, config) < combine_fitness(scores, config)


def test_diversity_is_measured_from_the_weights(parents):
    _, dirs = parents
    sds = _state_dicts(dirs)
    center = merge("linear", sds)
    assert population_diversity([sds[0], sds[0]], center) == 0.0
    combos = [g.build(sds) for g in initial_population(3, N_LAYERS, seed=0)]
    spread = population_diversity(combos, center)
    # Near-copies of one candidate are much less diverse than the 8 combos.
    near = [{k: v + 1e-4 * torch.randn_like(v) if v.is_floating_point() else v for k, v in combos[0].items()}
            for _ in range(4)]
    assert 0.25 < spread <= 1.5
    assert population_diversity(near, center) < 0.5 * spread


def test_invalid_merge_is_replaced_by_a_linear_merge_and_recorded(parents):
    from forge.phases.evomerge import build_candidate

    _, dirs = parents
    sds = _state_dicts(dirs)
    template, tokenizer = load_model_dir(dirs["a"])
    probe = torch.tensor(tokenizer("1 plus 2 is 3", add_special_tokens=False)["input_ids"])
    broken = Genome((Recipe(combo_id=7, weights=(0.5, 0.3, 0.2), layer_sources=(1, 2), layer_indices=(0, 1),
                            layer_scales=(float("nan"), 1.0)),), (1.0,), "mutant")  # DFS scale NaN
    candidate = build_candidate("bad", broken, sds, template, probe)
    assert candidate.event is not None and "non-finite" in candidate.event["reason"]
    assert candidate.event["genome"] == broken.to_dict()
    assert candidate.genome.origin == "linear_fallback" and candidate.genome.recipes[0].combo_id is None
    expected = merge("linear", sds, weights=(0.5, 0.3, 0.2))
    assert all(torch.equal(candidate.state_dict[k], expected[k]) for k in expected)
    fine = build_candidate("ok", initial_population(3, N_LAYERS, 0)[5], sds, template, probe)
    assert fine.event is None and fine.genome.origin == "combo"


def test_fitness_is_deterministic_for_the_same_model(parents, shared_data):
    from forge.phases.evomerge import measure_terms

    root, dirs = parents
    config = EvoMergeConfig(accuracy_limit=4, heldout_max_chars=1500, perplexity_window=64, speed_batch=2,
                            speed_seq_len=16, speed_repeats=1)
    model, tokenizer = load_model_dir(dirs["b"])
    texts = read_texts(root / "cognate" / TEXT_FILES[HELDOUT], config.heldout_max_chars)
    first = measure_terms(model, tokenizer, texts, config, data_dir=str(shared_data))
    second = measure_terms(model, tokenizer, texts, config, data_dir=str(shared_data))
    assert first["perplexity"] > 1 and 0.0 <= first["accuracy"] <= 1.0 and first["tokens_per_s"] > 0
    for key in ("perplexity", "accuracy", "accuracy/arc_easy", "params", "bytes"):
        assert first[key] == second[key]
    # The wall-clock term aside (weight 0 here), the same model always gets the same fitness.
    still = EvoMergeConfig(weight_speed=0.0)
    reference = {"tokens_per_s": 1.0, "bytes": first["bytes"]}
    assert combine_fitness(fitness_scores(first, reference), still) == combine_fitness(
        fitness_scores(second, reference), still)
    with pytest.raises(FileNotFoundError, match="run the cognate phase"):
        read_texts(root / "missing" / TEXT_FILES[HELDOUT], 100)
    with pytest.raises(FileNotFoundError, match="no finished phase .* declares them"):
        _context(root, dirs).read_texts("replay", 100)


def test_heldout_texts_are_taken_across_the_whole_file(tmp_path):
    path = tmp_path / TEXT_FILES[HELDOUT]
    atomic_write_json(path, {"texts": [letter * 100 for letter in "abcdefghij"]})
    assert [t[0] for t in read_texts(path, 300)] == ["a", "d", "g"]  # not the first three
    assert len(read_texts(path, 10**9)) == 10


# ------------------------------------------------------------------------------------- the phase

def test_phase_evolves_and_writes_a_loadable_champion(phase_run):
    ctx, result = phase_run
    champion = result.outputs["champion"]
    assert champion == ctx.phase_dir / "champion"
    model, _ = load_model_dir(champion)
    assert model.config.model_type == "cognate"
    summary = result.summary
    gen0 = read_json(ctx.work_dir / "generations" / "gen_000.json")
    assert [p["label"] for p in gen0["population"]] == [f"g0_combo{c}" for c in range(8)]
    assert {p["genome"]["origin"] for p in gen0["population"]} <= {"combo", "linear_fallback"}
    assert set(summary["parents"]) == {"parent_a", "parent_b", "parent_c"}
    assert summary["generations"] == 1 and summary["stop_reason"] in {"max_generations", "target_improvement"}
    gen1 = read_json(ctx.work_dir / "generations" / "gen_001.json")
    assert len(gen1["population"]) == 8
    best0 = sorted(gen0["population"], key=lambda p: -p["fitness"])[:2]
    assert [p["label"] for p in gen1["population"][:2]] == [p["label"] for p in best0]  # elites kept
    assert gen1["population"][2]["genome"]["origin"] == "loser_merge"
    assert summary["champion"]["fitness"] == max(p["fitness"] for p in gen1["population"])
    assert summary["champion"]["fitness"] >= summary["generation0_best"]["fitness"]
    # The spec's criteria compare the measured figures (boundaries: tests/test_criteria.py).
    assert summary["criteria"] == evomerge_criteria(summary["improvement_over_generation0"],
                                                    summary["improvement_over_best_parent"],
                                                    summary["parent_diversity"], EvoMergeConfig())
    best_parent = max(parent["fitness"] for parent in summary["parents"].values())
    assert summary["best_parent"]["fitness"] == best_parent
    assert summary["improvement_over_best_parent"] == pytest.approx(
        (summary["champion"]["fitness"] - best_parent) / abs(best_parent))
    generation0 = summary["generation0_best"]["fitness"]
    assert summary["criteria"]["improvement_over_generation0"]["value"] == pytest.approx(
        (summary["champion"]["fitness"] - generation0) / abs(generation0))
    # No data folder: the accuracy term is the task world's held-out problems (accuracy_tasks_offline).
    assert summary["fitness_terms"] == ["accuracy", "perplexity", "size", "speed"]
    assert set(summary["champion"]["terms"]) >= {"accuracy", "accuracy/taskworld_easy"}
    # The champion is written whatever the parents scored: whether it goes on is the scoreboard gate's call.
    rebuilt = Genome.from_dict(summary["champion"]["genome"]).build(_state_dicts(ctx.inputs))
    assert all(torch.equal(model.state_dict()[k], rebuilt[k]) for k in rebuilt)
    # Logged per generation, plotted, and every trial's genome and scores in the Tune experiment.
    records = [m for m in read_metrics(ctx.phase_dir / "metrics.jsonl") if "evomerge/best" in m]
    assert [m["step"] for m in records] == [0, 1]
    for key in ("best", "mean", "worst", "diversity", "improvement", "champion_genome"):
        assert all(f"evomerge/{key}" in m for m in records)
    # The spec's W&B names too.
    assert [(m["generation"], m["best_fitness"], m["diversity"], m["improvement"]) for m in records] == [
        (m["evomerge/generation"], m["evomerge/best"], m["evomerge/diversity"], m["evomerge/improvement"])
        for m in records]
    assert records[0]["evomerge/diversity"] > 0
    assert (ctx.phase_dir / "fitness.png").stat().st_size > 1000
    trials = sorted((ctx.work_dir / "tune" / "gen_001").glob("*/params.json"))
    assert len(trials) == 6
    params = json.loads(trials[0].read_text())
    assert params["candidate"]["genome"]["origin"] == "loser_merge"
    result_line = json.loads((trials[0].parent / "result.json").read_text().splitlines()[-1])
    assert result_line["perplexity"] > 1 and result_line["tokens_per_s"] > 0


def test_champion_loads_in_the_benchmarks_cli(phase_run, shared_data, tmp_path):
    ctx, result = phase_run
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--model", str(result.outputs["champion"]),
                           "--tasks", "arc_easy", "--limit", "2", "--data-dir", str(shared_data), "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.is_file()


def test_interrupted_phase_resumes_from_its_checkpoints_and_tune_experiment(phase_run):
    from forge.phases import evomerge

    ctx, result = phase_run
    champion_hash = state_dict_hash(load_model_dir(result.outputs["champion"])[0].state_dict())
    # A crash after generation 1's trials finished but before its checkpoint was written.
    shutil.rmtree(result.outputs["champion"])
    (ctx.work_dir / "generations" / "gen_001.json").unlink()
    trial_results = sorted((ctx.work_dir / "tune" / "gen_001").glob("*/result.json"))
    before = [p.read_text() for p in trial_results]
    saved = os.environ.pop("FORGE_DATA_DIR", None)
    try:
        resumed = evomerge.run(ctx)
    finally:
        if saved is not None:
            os.environ["FORGE_DATA_DIR"] = saved
    assert resumed.summary["resumed_from_generation"] == 0
    assert resumed.summary["tune_restored_generations"] == [1]
    assert [p.read_text() for p in trial_results] == before  # no trial ran again
    assert state_dict_hash(load_model_dir(resumed.outputs["champion"])[0].state_dict()) == champion_hash
