"""Phase 6 proposals: A-cycle sentence mutations, the self-prompt coherence rule, and the B-cycle
sampling with its temperature sweep and human fallback, on real tiny models."""
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from benchmarks.tooluse import INITIAL_TOOL_PROMPT, TOOL_PROMPT_VARIANTS
from forge.data.tokenizer import load_gpt2_tokenizer, train_bpe_tokenizer
from forge.abcycles.prompt_variants import (HUMAN_PERSONAS, LIST_PRIMER, META_PROMPT, TOOL_INSTRUCTIONS, Proposal,
                                   coherence_problem, mutate_prompt, self_prompts, split_candidates,
                                   split_sentences)

# Spec 000, "Example Model-Generated Self-Prompts".
SPEC_SELF_PROMPTS = (
    "I approach problems by first identifying the core constraint or bottleneck, then working backwards from "
    "the desired outcome. I validate each reasoning step against my understanding of fundamental principles "
    "before proceeding.",
    "I reason through analogy and pattern matching, connecting new problems to similar solved problems. When I "
    "encounter ambiguity, I explicitly enumerate possible interpretations and test each one systematically.",
    "I break complex problems into a dependency graph of subproblems, solving leaves first and composing "
    "solutions upward. I maintain a working memory of partial results and revisit assumptions when subproblem "
    "solutions conflict.",
    "I explore solution spaces through iterative refinement, starting with a simple approach and progressively "
    "adding sophistication. I use tools to validate intermediate steps and catch errors early before they "
    "cascade.",
)
THREE_SENTENCES = "Think step by step. Use the calculator for arithmetic. Check the answer before you finish."


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    return load_gpt2_tokenizer()


# ---------------------------------------------------------------- A-cycle mutations

def test_mutations_are_deterministic_distinct_and_differ_from_the_input():
    for prompt in (INITIAL_TOOL_PROMPT, THREE_SENTENCES, *TOOL_PROMPT_VARIANTS):
        first = mutate_prompt(prompt, 4, seed=3)
        assert first == mutate_prompt(prompt, 4, seed=3)
        assert len(first) == 4 and all(isinstance(p, Proposal) for p in first)
        texts = [p.prompt for p in first]
        assert len(set(texts)) == 4 and prompt not in texts and all(texts)
    assert [p.prompt for p in mutate_prompt(THREE_SENTENCES, 4, seed=3)] != \
        [p.prompt for p in mutate_prompt(THREE_SENTENCES, 4, seed=4)]


def test_each_operator_does_what_its_origin_says():
    original = split_sentences(THREE_SENTENCES)
    proposals = mutate_prompt(THREE_SENTENCES, 24, seed=0)
    assert {p.origin for p in proposals} == {"mutation:drop", "mutation:swap", "mutation:insert",
                                             "mutation:replace"}
    for proposal in proposals:
        sentences = split_sentences(proposal.prompt)
        added = [s for s in sentences if s not in original]
        operator = proposal.origin.split(":")[1]
        if operator == "drop":
            assert len(sentences) == 2 and not added
        elif operator == "swap":
            assert sorted(sentences) == sorted(original) and sentences != original
        elif operator == "insert":
            assert len(sentences) == 4 and len(added) == 1 and added[0] in TOOL_INSTRUCTIONS
        else:
            assert len(sentences) == 3 and len(added) == 1 and added[0] in TOOL_INSTRUCTIONS


def test_one_sentence_prompts_only_grow_or_change_and_impossible_requests_fail():
    proposals = mutate_prompt(INITIAL_TOOL_PROMPT, 8, seed=1)
    assert {p.origin for p in proposals} <= {"mutation:insert", "mutation:replace"}
    # one sentence: 12 pool sentences inserted before or after it, or replacing it
    assert len(mutate_prompt(INITIAL_TOOL_PROMPT, 36, seed=1)) == 36
    with pytest.raises(ValueError, match="distinct mutations"):
        mutate_prompt(INITIAL_TOOL_PROMPT, 37, seed=1)
    with pytest.raises(ValueError, match="n >= 1"):
        mutate_prompt(INITIAL_TOOL_PROMPT, 0, seed=1)


# ---------------------------------------------------------------- coherence rule and candidate splitting

def test_coherence_rule_accepts_the_spec_examples_and_our_personas(gpt2_tokenizer):
    for text in SPEC_SELF_PROMPTS + HUMAN_PERSONAS:
        assert coherence_problem(text, gpt2_tokenizer) is None, text


def test_coherence_rule_rejects_gibberish_repeats_empty_and_meta_prompt_copies(gpt2_tokenizer):
    generator = torch.Generator().manual_seed(0)
    gibberish = gpt2_tokenizer.decode(torch.randint(0, len(gpt2_tokenizer), (60,), generator=generator).tolist())
    cases = {
        "": "empty",
        "I think so.": "words, outside",
        "I " + gibberish: "",  # any reason: random tokens fail the letters or the function-word rule
        gibberish: "",
        "I check the the the the answer and then I check each step again.": "repeated 4 times",
        "You have developed your own reasoning patterns and problem-solving approaches.": "copies the meta-prompt",
        "The model approaches problems by finding the core constraint and then working backwards.": "first person",
        "I 123 456 789 000 ### $$$ %%% &&& solve.": "made of letters",
        "I Zionist assemblies detach Robots congrat flourish victims disobedience Canadians.": "function words",
    }
    for text, reason in cases.items():
        problem = coherence_problem(text, gpt2_tokenizer)
        assert problem is not None and reason in problem, (text, problem)


def test_candidates_split_at_list_numbers_else_whole_sample():
    sample = '1. "I plan first.\nThen I act."\n2) I check.\n\n3.   \n'
    assert split_candidates(sample) == ["I plan first. Then I act.", "I check."]
    assert split_candidates("  I just write one prompt.\n") == ["I just write one prompt."]
    assert split_candidates("  \n ") == []


# ---------------------------------------------------------------- B-cycle sampling on real tiny models

def test_random_model_runs_the_sweep_and_falls_back_to_human_personas(gpt2_tokenizer):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=len(gpt2_tokenizer),
                                       n_positions=256)).train()
    rng_before = torch.random.get_rng_state()
    proposals, log = self_prompts(model, gpt2_tokenizer, n=4, max_new_tokens=48, seed=5)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # sampling does not move the global RNG
    assert model.training  # mode restored
    assert [p.prompt for p in proposals] == list(HUMAN_PERSONAS[:4])
    assert {p.origin for p in proposals} == {"fallback:human"} and log["fallbacks_used"] == 4
    assert [run["temperature"] for run in log["sweep"]] == [0.8, 0.6, 1.0]
    assert all(run["samples"] == 4 and run["passed"] == 0 for run in log["sweep"])
    assert len(log["rejected"]) == sum(run["candidates"] for run in log["sweep"]) >= 12
    assert all(entry["reason"] for entry in log["rejected"])
    again = self_prompts(model, gpt2_tokenizer, n=4, max_new_tokens=48, seed=5)
    assert again == (proposals, log)  # same seed, same samples
    with pytest.raises(ValueError, match="positions"):
        self_prompts(model, gpt2_tokenizer, max_new_tokens=400)
    with pytest.raises(ValueError, match="fallback"):
        self_prompts(model, gpt2_tokenizer, n=4, fallback=HUMAN_PERSONAS[:2])


def test_a_model_that_writes_self_prompts_gets_them_accepted_then_filled_from_fallback():
    """A tiny model trained to answer the meta-prompt with two of the spec's examples as a numbered list."""
    answer = f"{LIST_PRIMER} {SPEC_SELF_PROMPTS[0]}\n2. {SPEC_SELF_PROMPTS[1]}<|endoftext|>"
    tokenizer = train_bpe_tokenizer([META_PROMPT + answer] * 4, vocab_size=600, seed=0)
    ids = torch.tensor([tokenizer.encode(META_PROMPT + answer)])
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=len(tokenizer), n_positions=256))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(80):
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1

    proposals, log = self_prompts(model, tokenizer, n=2, max_new_tokens=100, seed=0)
    assert proposals == [Proposal(SPEC_SELF_PROMPTS[0], "self:t=0.8"), Proposal(SPEC_SELF_PROMPTS[1], "self:t=0.8")]
    assert [run["temperature"] for run in log["sweep"]] == [0.8] and log["fallbacks_used"] == 0

    proposals, log = self_prompts(model, tokenizer, n=4, max_new_tokens=100, seed=0)
    assert [p.prompt for p in proposals[:2]] == list(SPEC_SELF_PROMPTS[:2]) and len(proposals) == 4
    # The model knows two prompts; a sample may splice them into a third that passes the filter (it did with the
    # digit-splitting BPE), and whatever the sweep does not supply comes from the human personas, in order.
    written = [p for p in proposals[2:] if p.origin.startswith("self:")]
    fallbacks = [p for p in proposals[2:] if p.origin == "fallback:human"]
    assert len(written) + len(fallbacks) == 2 and fallbacks and log["fallbacks_used"] == len(fallbacks)
    assert [p.prompt for p in fallbacks] == list(HUMAN_PERSONAS[:len(fallbacks)])
    assert all(coherence_problem(p.prompt, tokenizer) is None for p in written)
    # too few distinct prompts exist, so the whole sweep ran; the repeats were rejected as duplicates
    assert [run["temperature"] for run in log["sweep"]] == [0.8, 0.6, 1.0]
    assert any(entry["reason"].startswith("duplicate") for entry in log["rejected"])
