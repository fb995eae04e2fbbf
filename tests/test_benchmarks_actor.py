"""BenchmarkActor: resident model, weights through the object store, a pool yielding results as they finish."""
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from actors.benchmark_actor import BenchmarkActor, evaluate_on_pool
from benchmarks import evaluate
from forge.artifacts import save_model_dir, state_dict_hash
from forge.data.tokenizer import load_gpt2_tokenizer

TASKS = ["arc_easy"]
KWARGS = {"limit": 6, "seed": 5}


@pytest.fixture(scope="module")
def tokenizer():
    return load_gpt2_tokenizer()


def _model(tokenizer, seed):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=len(tokenizer),
                                      n_positions=256)).eval()


def test_actor_pool_evaluates_candidates_with_weights_sent_in_memory(ray_session, tokenizer, shared_data, tmp_path):
    ray = ray_session
    base = _model(tokenizer, 0)
    model_dir = save_model_dir(base, tokenizer, tmp_path / "base", phase="test")
    candidates = [_model(tokenizer, seed).state_dict() for seed in (1, 2, 3)]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = []
        for state in candidates:
            base.load_state_dict(state)
            expected.append({name: r.metrics for name, r in
                             evaluate(base, tokenizer, TASKS, data_dir=shared_data, **KWARGS).items()})
    finally:
        torch.set_num_threads(previous)

    actors = [BenchmarkActor.options(num_cpus=1).remote(str(model_dir), data_dir=str(shared_data))
              for _ in range(2)]
    pids = sorted(info["pid"] for info in ray.get([actor.info.remote() for actor in actors]))
    refs = [ray.put(state) for state in candidates]  # put once, shared by every actor
    seen = {}
    for index, results in evaluate_on_pool(actors, refs, TASKS, **KWARGS):
        assert index not in seen
        seen[index] = {name: r.metrics for name, r in results.items()}
    assert seen == dict(enumerate(expected))
    infos = ray.get([actor.info.remote() for actor in actors])
    assert sorted(info["pid"] for info in infos) == pids  # same processes: no actor was re-created
    assert {info["weights_hash"] for info in infos} <= {state_dict_hash(state) for state in candidates}

    # Evaluating a candidate again is answered by the actor's cache.
    again = ray.get(actors[0].set_weights.remote(refs[0]))
    assert again == state_dict_hash(candidates[0])
    cached = ray.get(actors[0].evaluate.remote(TASKS, **KWARGS))
    assert all(r.cached for r in cached.values())
    assert {name: r.metrics for name, r in cached.items()} == expected[0]

    # Weights that do not fit fail that candidate loudly instead of scoring the old weights.
    broken = dict(candidates[0])
    broken.pop("lm_head.weight", None)
    broken.pop("transformer.wte.weight")
    with pytest.raises(ray.exceptions.RayTaskError, match="wte"):
        list(evaluate_on_pool(actors[:1], [broken], TASKS, **KWARGS))
    for actor in actors:
        ray.kill(actor)
