"""Phase 6 prompt evaluation on a pool of BenchmarkActors: same numbers as in-process runs, results in
prompt order, repeated prompts answered by the actors' caches."""
import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from actors.benchmark_actor import BenchmarkActor, evaluate_prompts
from benchmarks.__main__ import main
from benchmarks.harness import evaluate
from benchmarks.tooluse import INITIAL_TOOL_PROMPT, TOOL_PROMPT_VARIANTS, ToolUseConfig, evaluate_tool_use
from benchmarks.tooluse_problems import load_problems
from forge.artifacts import save_model_dir, state_dict_hash
from forge.data.tokenizer import load_gpt2_tokenizer

CONFIG = ToolUseConfig(max_turns=2, max_new_tokens=12, num_fewshot=0, num_samples=2, batch_size=8)
PROMPTS = [INITIAL_TOOL_PROMPT, TOOL_PROMPT_VARIANTS[0], INITIAL_TOOL_PROMPT]


def _model(tokenizer, seed):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=len(tokenizer),
                                      n_positions=512)).eval()


@pytest.fixture(scope="module")
def pool(ray_session, tmp_path_factory, one_torch_thread):
    """Two actors started from one saved model, then given another model's weights (as Phase 6 does)."""
    ray = ray_session
    tokenizer = load_gpt2_tokenizer()
    model_dir = save_model_dir(_model(tokenizer, 0), tokenizer, tmp_path_factory.mktemp("prompts") / "base",
                               phase="test")
    model = _model(tokenizer, 1)
    actors = [BenchmarkActor.options(num_cpus=0.5).remote(str(model_dir)) for _ in range(2)]
    weights = ray.put(model.state_dict())
    hashes = ray.get([actor.set_weights.remote(weights) for actor in actors])
    assert hashes == [state_dict_hash(model.state_dict())] * 2
    yield ray, actors, model, tokenizer, hashes[0]
    for actor in actors:
        ray.kill(actor)


def _without_timing(result: dict) -> dict:
    return {key: value for key, value in result.items() if key not in ("wall_s", "cached")}


def test_tool_use_prompts_on_two_actors_match_in_process_runs_in_prompt_order(pool):
    ray, actors, model, tokenizer, weights_hash = pool
    problems = load_problems(["easy"], limit=3, seed=7)
    expected = {prompt: evaluate_tool_use(model, tokenizer, prompt=prompt, problems=problems, config=CONFIG).to_dict()
                for prompt in PROMPTS[:2]}
    assert expected[PROMPTS[0]]["records"] != expected[PROMPTS[1]]["records"]  # the prompt reaches the model

    results = evaluate_prompts(actors, PROMPTS, method="evaluate_tool_use", problems=problems, config=CONFIG,
                               weights_hash=weights_hash)
    assert [result["prompt"] for result in results] == PROMPTS
    for prompt, result in zip(PROMPTS, results):
        assert not result["cached"]
        assert _without_timing(result) == _without_timing(expected[prompt])
    infos = ray.get([actor.info.remote() for actor in actors])
    assert [info["cache_misses"] for info in infos] == [1, 1]  # one distinct prompt per actor, in parallel

    # The same prompts again: each actor answers from its cache.
    again = evaluate_prompts(actors, PROMPTS[:2], method="evaluate_tool_use", problems=problems, config=CONFIG)
    assert all(result["cached"] for result in again)
    assert [_without_timing(r) for r in again] == [_without_timing(expected[p]) for p in PROMPTS[:2]]
    after = ray.get([actor.info.remote() for actor in actors])
    assert sum(info["cache_hits"] for info in after) == sum(info["cache_hits"] for info in infos) + 2


def test_harness_prompts_on_two_actors_match_in_process_runs(pool, shared_data):
    _, actors, model, tokenizer, weights_hash = pool
    settings = {"limit": 4, "seed": 5, "num_fewshot": 0, "data_dir": shared_data, "log_samples": True}
    prompts = ["I reason step by step.", "I answer quickly and check my answer."]
    results = evaluate_prompts(actors, prompts, method="evaluate", tasks=["arc_easy"], weights_hash=weights_hash,
                               **settings)
    for prompt, result in zip(prompts, results):
        local = evaluate(model, tokenizer, ["arc_easy"], prompt=prompt, **settings)["arc_easy"]
        assert result["arc_easy"].metrics == local.metrics
        assert result["arc_easy"].samples == local.samples
    assert results[0]["arc_easy"].samples != results[1]["arc_easy"].samples


def test_bad_calls_fail_with_clear_errors(pool):
    ray, actors, *_ = pool
    with pytest.raises(ValueError, match="unknown method"):
        evaluate_prompts(actors, PROMPTS, method="swebench", tasks=["arc_easy"])
    with pytest.raises(ValueError, match="needs tasks"):
        evaluate_prompts(actors, PROMPTS, method="evaluate")
    with pytest.raises(ValueError, match="at least one"):
        evaluate_prompts([], PROMPTS, method="evaluate_tool_use", problems=[])
    problems = load_problems(["easy"], limit=1, seed=7)
    with pytest.raises(ray.exceptions.RayTaskError, match="caller expected"):
        evaluate_prompts(actors, PROMPTS[:1], method="evaluate_tool_use", problems=problems, config=CONFIG,
                         weights_hash="0" * 64)


def test_tooluse_command_line_writes_the_result_and_rejects_bad_usage(tmp_path, one_torch_thread, capsys):
    tokenizer = load_gpt2_tokenizer()
    model = _model(tokenizer, 1)
    model_dir = save_model_dir(model, tokenizer, tmp_path / "model", phase="test")
    out = tmp_path / "tooluse.json"
    argv = ["tooluse", "--model", str(model_dir), "--prompt", PROMPTS[1], "--sources", "easy", "--limit", "3",
            "--seed", "7", "--max-turns", "2", "--max-new-tokens", "12", "--num-fewshot", "0", "--num-samples", "2",
            "--batch-size", "8", "--json", str(out)]
    assert main(argv) == 0
    assert "tool_usage_rate" in capsys.readouterr().out
    result = json.loads(out.read_text())["result"]
    expected = evaluate_tool_use(model, tokenizer, prompt=PROMPTS[1], problems=load_problems(["easy"], limit=3, seed=7),
                                 config=CONFIG)
    assert result["prompt"] == PROMPTS[1] and result["n_items"] == 3
    assert result["metrics"] == expected.metrics and result["records"] == expected.records
    for bad in (["--sources", "easy,nope"], ["--limit", "0"], ["--num-samples", "2", "--temperature", "0"]):
        with pytest.raises(SystemExit) as error:
            main(["tooluse", "--model", str(model_dir), *bad])
        assert error.value.code == 2
    with pytest.raises(SystemExit) as error:
        main(["tooluse", "--model", str(tmp_path / "missing")])
    assert error.value.code == 2
