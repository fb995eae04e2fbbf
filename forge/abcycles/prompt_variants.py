"""Phase 6 prompt proposals: A-cycle mutations of the tool prompt, B-cycle self-prompts of the model.

A-cycle (``mutate_prompt``): the spec has the model's tool prompt improved through variants. Our
models are tiny and cannot write useful tool prompts, so variants come from sentence-level mutation
of the current best prompt (drop, swap, insert or replace a sentence; inserted sentences come from
``TOOL_INSTRUCTIONS``, a fixed pool written here). The benchmark then picks the winner.

B-cycle (``self_prompts``): the model is sampled on the spec's ``META_PROMPT`` at temperature 0.8,
its output is split into candidate self-prompts, incoherent ones are filtered out by a stated rule
(``coherence_problem``), the spec's temperature sweep (0.6, 1.0) runs when too few pass, and the
rest is filled from human-written persona prompts (spec risk 1: "fall back to predefined prompts").
"""
from __future__ import annotations

import random
import re
from typing import Sequence

import torch

from forge.abcycles.driver import Proposal
from forge.modelinfo import max_positions, pad_token_id

__all__ = ["HUMAN_PERSONAS", "LIST_PRIMER", "META_PROMPT", "TOOL_INSTRUCTIONS", "Proposal", "coherence_problem",
           "mutate_prompt", "self_prompts", "split_candidates", "split_sentences"]

# Spec 000, "Self-Prompt Generation": the meta-prompt, verbatim (without the code block's outer newlines).
META_PROMPT = """You are an AI model that has been trained on curriculum learning with moral alignment.
You have developed your own reasoning patterns and problem-solving approaches.

Generate 4 different prompts that describe:
1. How you think through problems
2. Your reasoning style and identity
3. What makes your approach effective
4. Your strengths and how you leverage them

Each prompt should be 2-4 sentences, written in first person ("I...").
The prompts should be diverse and capture different aspects of your thinking.

Output only the 4 prompts, numbered 1-4."""

# Ours (not from the spec): tool-use instructions that mutations insert into the tool prompt.
TOOL_INSTRUCTIONS: tuple[str, ...] = (
    "Use the calculator for every arithmetic step instead of computing in your head.",
    "Before giving the final answer, check it with a tool.",
    "Run your code with the Python tool before you submit it.",
    "Read each tool result carefully and use it in the next step.",
    "If a tool returns an error, fix the call and try again.",
    "Break the problem into small steps and solve each step with one tool call.",
    "Copy the numbers from the question exactly when you call a tool.",
    "When you are unsure, call a tool rather than guess.",
    "Keep each tool call to one expression or one short program.",
    "Give the final answer as soon as a tool result confirms it.",
    "Write down what the question asks for before calling any tool.",
    "Prefer the simplest tool that can answer the current step.",
)

# Ours (not from the spec): first-person persona prompts, the B-cycle's fallback when self-prompts fail.
HUMAN_PERSONAS: tuple[str, ...] = (
    "I read the question twice and write down what it asks for before I start. I solve the problem in "
    "small steps and check each result before I move on.",
    "I look for a problem I have solved before that is like this one. I reuse its method and test "
    "whether it still fits the new details.",
    "I start with the simplest answer that could work and then improve it. When a step fails, I go back "
    "to the last result I trust and try another way.",
    "I use tools to check my work instead of trusting my first guess. I keep track of the numbers and "
    "facts I have found so that I can use them later in the problem.",
)

MUTATION_OPERATORS = ("drop", "swap", "insert", "replace")

# Coherence rule settings (see coherence_problem).
MIN_WORDS, MAX_WORDS = 8, 80  # words in a self-prompt (the spec asks for 2-4 sentences)
MAX_TOKEN_RUN = 3  # longest allowed run of one repeated token
MIN_PLAIN_SHARE = 0.9  # share of words made of letters (optionally ' or - inside, punctuation after)
MIN_FUNCTION_SHARE = 0.15  # share of words that are common English function words
MAX_META_TRIGRAM_SHARE = 0.5  # share of word trigrams also in the meta-prompt from which it is a copy
FIRST_PERSON = frozenset({"i", "i'm", "i've", "i'd", "i'll"})
FUNCTION_WORDS = frozenset(
    "a an the and or but if then than so as at by for from in into of on onto to with without about "
    "before after when while until because each every all any some no not this that these those it its "
    "i me my we our you your he she they them their is are was were be been being am do does did have "
    "has had can could will would should may might must which who what how where there here up out "
    "over under again more most other such only own same too very just".split())
_PLAIN_WORD = re.compile(r"[A-Za-z]+(?:['’-][A-Za-z]+)*")
_EDGE_PUNCTUATION = "\"'“”‘’()[]{}.,;:!?"
_NUMBERED_ITEM = re.compile(r"(?m)^\s*\d{1,2}[.)]\s*")
LIST_PRIMER = "\n\n1."  # appended to the meta-prompt so the sample starts as item 1 of a numbered list


# ---------------------------------------------------------------- A-cycle: mutation

def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (split after . ! or ? followed by whitespace)."""
    return [sentence for sentence in re.split(r"(?<=[.!?])\s+", text.strip()) if sentence]


def _join(sentences: Sequence[str]) -> str:
    # Sentences joined with a full stop where one is missing, so "A" + "B." reads "A. B.".
    return " ".join(s if s[-1] in ".!?" else f"{s}." for s in sentences)


def _mutations(sentences: list[str], operator: str) -> list[list[str]]:
    """Every sentence list one application of ``operator`` makes from ``sentences``."""
    present = {s.lower().rstrip(".!?") for s in sentences}
    pool = [s for s in TOOL_INSTRUCTIONS if s.lower().rstrip(".!?") not in present]
    k = len(sentences)
    if operator == "drop":
        return [sentences[:i] + sentences[i + 1:] for i in range(k)] if k >= 2 else []
    if operator == "swap":
        out = []
        for i in range(k):
            for j in range(i + 1, k):
                swapped = list(sentences)
                swapped[i], swapped[j] = swapped[j], swapped[i]
                out.append(swapped)
        return out
    if operator == "insert":
        return [sentences[:at] + [s] + sentences[at:] for s in pool for at in range(k + 1)]
    if operator == "replace":
        return [sentences[:i] + [s] + sentences[i + 1:] for i in range(k) for s in pool]
    raise ValueError(f"unknown mutation operator {operator!r}; known: {', '.join(MUTATION_OPERATORS)}")


def mutate_prompt(prompt: str, n: int, seed: int) -> list[Proposal]:
    """``n`` distinct sentence-level mutations of ``prompt``, none equal to it, the same for the same seed.

    Operators take turns (in an order drawn from ``seed``) so the variants mix kinds: drop a sentence,
    swap two, insert a ``TOOL_INSTRUCTIONS`` sentence, or replace a sentence by one. Raises ValueError
    when fewer than ``n`` distinct mutations exist."""
    if n < 1:
        raise ValueError(f"mutate_prompt needs n >= 1, got {n}")
    rng = random.Random(seed)
    sentences = split_sentences(prompt)
    seen = {prompt.strip(), _join(sentences)}
    queues = []
    for operator in rng.sample(MUTATION_OPERATORS, len(MUTATION_OPERATORS)):
        options = _mutations(sentences, operator)
        rng.shuffle(options)
        queues.append((operator, options))
    proposals: list[Proposal] = []
    while len(proposals) < n and any(options for _, options in queues):
        for operator, options in queues:
            while options and len(proposals) < n:
                text = _join(options.pop())
                if text not in seen:
                    seen.add(text)
                    proposals.append(Proposal(text, f"mutation:{operator}"))
                    break
    if len(proposals) < n:
        raise ValueError(f"only {len(proposals)} distinct mutations of this prompt exist; ask for n <= "
                         f"{len(proposals)}")
    return proposals


# ---------------------------------------------------------------- B-cycle: self-prompts

def split_candidates(text: str) -> list[str]:
    """Candidate prompts in one sample: the items of a numbered list ("1. ...", "2) ..."), else the
    whole text; whitespace collapsed, surrounding quotes removed, empty items dropped."""
    parts = _NUMBERED_ITEM.split(text) if _NUMBERED_ITEM.search(text) else [text]
    candidates = []
    for part in parts:
        cleaned = " ".join(part.split()).strip("\"“”' ")
        if cleaned:
            candidates.append(cleaned)
    return candidates


def _trigrams(words: Sequence[str]) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + 3]) for i in range(len(words) - 2)}


def _bare_words(text: str) -> list[str]:
    return [w for w in (word.strip(_EDGE_PUNCTUATION).lower() for word in text.split()) if w]


def coherence_problem(text: str, tokenizer, meta_prompt: str = META_PROMPT) -> str | None:
    """Why ``text`` is not a coherent self-prompt, or None when it is. The rule, checked in order:

    1. not empty; 2. 8 to 80 words; 3. no token of ``tokenizer`` repeated more than 3 times in a row;
    4. not a copy of the meta-prompt (less than half of its word trigrams occur in it);
    5. first person: the first word is "I" (or I'm, I've, I'd, I'll);
    6. at least 90% of the words are plain words (letters, with ' or - inside, punctuation around);
    7. at least 15% of the words are common English function words (the, and, to, I, of, ...).
    Random-token gibberish fails 5, 6 or 7; the spec's four example self-prompts pass all seven.
    Words are not checked against the tokenizer's vocabulary: a small BPE (the tiny presets' 4096
    tokens) splits half of the spec's example words, so "one token" does not mean "a real word".
    """
    words = text.split()
    if not words:
        return "empty"
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return f"{len(words)} words, outside {MIN_WORDS}-{MAX_WORDS}"
    ids = tokenizer.encode(text, add_special_tokens=False)
    run = longest = 1
    for previous, current in zip(ids, ids[1:]):
        run = run + 1 if current == previous else 1
        longest = max(longest, run)
    if longest > MAX_TOKEN_RUN:
        return f"a token repeated {longest} times in a row (at most {MAX_TOKEN_RUN})"
    bare = _bare_words(text)
    trigrams = _trigrams(bare)
    if trigrams:
        copied = len(trigrams & _trigrams(_bare_words(meta_prompt))) / len(trigrams)
        if copied >= MAX_META_TRIGRAM_SHARE:
            return f"copies the meta-prompt ({copied:.0%} of its word trigrams are in it)"
    if not bare or bare[0].replace("’", "'") not in FIRST_PERSON:
        return f"not first person: starts with {words[0]!r}, not 'I'"
    plain = [word for word in (w.strip(_EDGE_PUNCTUATION) for w in words) if _PLAIN_WORD.fullmatch(word)]
    if len(plain) / len(words) < MIN_PLAIN_SHARE:
        return f"only {len(plain)}/{len(words)} words are made of letters (need {MIN_PLAIN_SHARE:.0%})"
    function = sum(word in FUNCTION_WORDS for word in bare)
    if function / len(words) < MIN_FUNCTION_SHARE:
        return f"only {function}/{len(words)} common function words (need {MIN_FUNCTION_SHARE:.0%}): not prose"
    return None


@torch.no_grad()
def _sample(model, tokenizer, context: str, *, n: int, temperature: float, max_new_tokens: int,
            seed: int) -> list[str]:
    """``n`` continuations of ``context`` sampled at ``temperature`` (plain softmax sampling: no top-k
    or top-p), reproducible for ``seed`` without touching the global RNG."""
    device = next(model.parameters()).device
    ids = torch.tensor([tokenizer.encode(context, add_special_tokens=False)], device=device)
    limit = max_positions(model)
    if limit is not None and ids.shape[1] + max_new_tokens > limit:
        raise ValueError(f"the meta-prompt ({ids.shape[1]} tokens) plus max_new_tokens={max_new_tokens} exceeds "
                         f"the model's {limit} positions: lower max_new_tokens or shorten the meta-prompt")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        output = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=temperature,
                                top_k=0, top_p=1.0, max_new_tokens=max_new_tokens, num_return_sequences=n,
                                pad_token_id=pad_token_id(tokenizer), eos_token_id=tokenizer.eos_token_id)
    return tokenizer.batch_decode(output[:, ids.shape[1]:], skip_special_tokens=True)


def self_prompts(model, tokenizer, meta_prompt: str = META_PROMPT, *, n: int = 4,
                 temperatures: Sequence[float] = (0.8, 0.6, 1.0), max_new_tokens: int = 160, seed: int = 0,
                 fallback: Sequence[str] = HUMAN_PERSONAS) -> tuple[list[Proposal], dict]:
    """The B-cycle's ``n`` persona prompts: the model's own where coherent, else ``fallback`` ones.

    For each temperature in turn (the first is the spec's 0.8; the others run only while fewer than
    ``n`` have passed), ``n`` samples of the meta-prompt followed by "1." are split into candidates
    (``split_candidates``) and kept when ``coherence_problem`` finds nothing wrong and they are new.
    Missing ones come from ``fallback`` in order. Returns the proposals and a log: ``sweep`` (per
    temperature run: samples, candidates, passed), ``rejected`` (temperature, text cut to 200
    characters, reason), ``fallbacks_used``.
    """
    if n < 1:
        raise ValueError(f"self_prompts needs n >= 1, got {n}")
    if not temperatures or any(t <= 0 for t in temperatures):
        raise ValueError(f"temperatures must be a non-empty sequence of values > 0, got {tuple(temperatures)}")
    if len(set(fallback)) < n:
        raise ValueError(f"fallback needs at least n={n} distinct prompts so the cycle always has {n} "
                         f"candidates, got {len(set(fallback))}: pass fallback=HUMAN_PERSONAS")
    proposals: list[Proposal] = []
    log: dict = {"sweep": [], "rejected": [], "fallbacks_used": 0}
    was_training = model.training
    model.eval()
    try:
        for index, temperature in enumerate(temperatures):
            if len(proposals) >= n:
                break
            samples = _sample(model, tokenizer, meta_prompt + LIST_PRIMER, n=n, temperature=temperature,
                              max_new_tokens=max_new_tokens, seed=seed + index)
            candidates = [c for sample in samples for c in split_candidates("1." + sample)]
            passed = 0
            for candidate in candidates:
                problem = coherence_problem(candidate, tokenizer, meta_prompt)
                if problem is None and any(p.prompt == candidate for p in proposals):
                    problem = "duplicate of an accepted self-prompt"
                if problem is not None:
                    log["rejected"].append({"temperature": temperature, "text": candidate[:200], "reason": problem})
                    continue
                passed += 1
                if len(proposals) < n:
                    proposals.append(Proposal(candidate, f"self:t={temperature}"))
            log["sweep"].append({"temperature": temperature, "samples": len(samples),
                                 "candidates": len(candidates), "passed": passed})
    finally:
        model.train(was_training)
    for persona in dict.fromkeys(fallback):
        if len(proposals) >= n:
            break
        if all(p.prompt != persona for p in proposals):
            proposals.append(Proposal(persona, "fallback:human"))
            log["fallbacks_used"] += 1
    return proposals, log
