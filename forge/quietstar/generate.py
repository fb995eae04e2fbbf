"""Generation that can hide its thoughts, and the measurements Quiet-STaR needs from it.

The model continues each prompt token by token (greedy, or seeded sampling). Thinking blocks
(``[thinking] ... [/endthinking]``) stay in ``full_text`` and are removed from ``visible_text``;
``allow_thinking=False`` sets the logits of the 12 thinking tokens to -inf (the no-thinking baseline).
Decoding continues the model's KV cache (``forge.decoding``); prompts of equal token length share a
batch, so no padding can change a result.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from forge.decoding import IncrementalDecoder, sample_next
from forge.devices import model_device
from forge.quietstar.api import answers_match
from forge.quietstar.tokens import THINK_END, THINK_START, THINKING_TOKENS, thinking_token_ids

DEFAULT_BATCH_SIZE = 8  # prompts generated together (equal token length only)
_MARKER = re.compile(re.escape(THINK_START) + "|" + re.escape(THINK_END))
_ANSWER_LINE = re.compile(r"Answer:[ \t]*([^\n]*)")


@dataclass(frozen=True)
class GenerationOutput:
    """One prompt's continuation."""

    prompt: str  # the prompt as given
    full_text: str  # the continuation with its thinking blocks (end-of-text not included)
    visible_text: str  # what a user sees: full_text without thinking blocks when hide_thoughts, else full_text
    thought_tokens: int  # generated tokens inside thinking blocks, the [thinking]/[/endthinking] markers included
    generated_tokens: int  # tokens the model produced (a final end-of-text included)
    used_thinking: bool  # a [thinking] token was generated


def strip_thoughts(text: str) -> str:
    """``text`` without its thinking blocks: each ``[thinking] ... [/endthinking]`` (nested blocks count as
    one, up to the closing marker that returns to the top level), an unclosed trailing block, and a stray
    ``[/endthinking]`` are removed, with the whitespace right after a removed block. Text without thinking
    markers comes back unchanged."""
    visible: list[str] = []
    depth, cursor = 0, 0
    for match in _MARKER.finditer(text):
        if depth == 0:
            visible.append(text[cursor:match.start()])
        if match.group() == THINK_START:
            depth += 1
        elif depth > 0:
            depth -= 1
        cursor = match.end()
        if depth == 0:
            cursor = len(text) - len(text[cursor:].lstrip())
    if depth == 0:
        visible.append(text[cursor:])
    return "".join(visible)


def _thinking_ids(tokenizer) -> dict[str, int]:
    """The thinking tokens' ids; empty for a tokenizer that has none of them yet (a model before Step 1
    cannot think, so its outputs hold no thoughts); a partial set raises, as ``thinking_token_ids`` does."""
    vocab = tokenizer.get_vocab()
    if not any(token in vocab for token in THINKING_TOKENS):
        return {}
    return thinking_token_ids(tokenizer)


@torch.no_grad()
def _generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, hide_thoughts: bool,
              allow_thinking: bool, temperature: float, seed: int,
              finished: Callable[[str], bool] | None) -> list[GenerationOutput]:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}")
    ids_of = _thinking_ids(tokenizer)
    start_id, end_id = ids_of.get(THINK_START), ids_of.get(THINK_END)
    banned = torch.tensor(sorted(ids_of.values()), dtype=torch.long)
    eos = tokenizer.eos_token_id
    device = model_device(model)
    generator = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
    was_training = model.training
    model.eval()
    encoded = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
    for prompt, ids in zip(prompts, encoded):
        if not ids:
            raise ValueError(f"prompt {prompt!r} has no tokens: give every prompt some text")
    by_length: dict[int, list[int]] = {}
    for index, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(index)
    generated: list[list[int]] = [[] for _ in prompts]
    try:
        for _, group in sorted(by_length.items()):
            for start in range(0, len(group), DEFAULT_BATCH_SIZE):
                rows = group[start:start + DEFAULT_BATCH_SIZE]
                decoder = IncrementalDecoder(model, torch.tensor([encoded[i] for i in rows], device=device))
                for _ in range(max_new_tokens):
                    logits = decoder.logits()
                    if not allow_thinking and len(banned):
                        logits[:, banned.to(device)] = float("-inf")
                    next_tokens = sample_next(logits, temperature, generator)
                    live = []
                    for position, (row, token) in enumerate(zip(rows, next_tokens.tolist())):
                        generated[row].append(token)
                        done = token == eos or (finished is not None and finished(
                            strip_thoughts(tokenizer.decode(generated[row], skip_special_tokens=False))))
                        if not done:
                            live.append(position)
                    if not live:
                        break
                    keep = torch.tensor(live, device=device)
                    rows = [rows[k] for k in live]
                    decoder.append(next_tokens)
                    if len(live) < len(next_tokens):
                        decoder.keep(keep)
    finally:
        model.train(was_training)
    outputs = []
    for prompt, tokens in zip(prompts, generated):
        text_tokens = tokens[:-1] if tokens and tokens[-1] == eos else tokens
        full_text = tokenizer.decode(text_tokens, skip_special_tokens=False)
        outputs.append(GenerationOutput(
            prompt=prompt, full_text=full_text, visible_text=strip_thoughts(full_text) if hide_thoughts else full_text,
            thought_tokens=_count_thought_tokens(tokens, start_id, end_id), generated_tokens=len(tokens),
            used_thinking=start_id is not None and start_id in tokens))
    return outputs


def _count_thought_tokens(tokens: Sequence[int], start_id: int | None, end_id: int | None) -> int:
    if start_id is None:
        return 0
    depth, count = 0, 0
    for token in tokens:
        if token == start_id:
            depth += 1
        if depth > 0:
            count += 1
        if token == end_id and depth > 0:
            depth -= 1
    return count


def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, hide_thoughts: bool = True,
             allow_thinking: bool = True, temperature: float = 0.0, seed: int = 0) -> list[GenerationOutput]:
    """Continue each prompt for up to ``max_new_tokens`` tokens or until end-of-text (see module doc).

    ``temperature`` 0 is greedy; above 0, sampling from a generator seeded with ``seed``. A tokenizer
    without the thinking tokens (a model before Step 1) gives outputs without thoughts.
    """
    return _generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, hide_thoughts=hide_thoughts,
                     allow_thinking=allow_thinking, temperature=temperature, seed=seed, finished=None)


def thinking_usage(outputs: Sequence[GenerationOutput]) -> float:
    """Fraction of outputs that opened a thinking block (the spec's thinking_token_usage)."""
    if not outputs:
        raise ValueError("thinking_usage needs at least one generation output")
    return sum(output.used_thinking for output in outputs) / len(outputs)


def generation_speed(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int) -> dict[str, float]:
    """Wall-clock generation speed with thinking allowed and forbidden (same prompts, greedy).

    Tokens/s alone hides the cost of thinking (more tokens at a similar rate), so the seconds per prompt
    are reported too: ``latency_ratio`` is how many times longer an answer takes with thinking.
    """
    prompts = list(prompts)
    figures: dict[str, float] = {}
    for label, allow in (("thinking", True), ("no_thinking", False)):
        started = time.perf_counter()
        outputs = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, allow_thinking=allow)
        seconds = time.perf_counter() - started
        tokens = sum(output.generated_tokens for output in outputs)
        figures[f"tokens_per_s_{label}"] = tokens / seconds
        figures[f"seconds_per_prompt_{label}"] = seconds / len(prompts)
        figures[f"tokens_per_prompt_{label}"] = tokens / len(prompts)
        figures[f"thinking_usage_{label}"] = thinking_usage(outputs)
    figures["speed_ratio"] = figures["tokens_per_s_thinking"] / figures["tokens_per_s_no_thinking"]
    figures["latency_ratio"] = figures["seconds_per_prompt_thinking"] / figures["seconds_per_prompt_no_thinking"]
    return figures


def visible_answer(visible_text: str) -> str:
    """The answer in visible text: the rest of the first ``Answer:`` line, else the first non-empty line."""
    match = _ANSWER_LINE.search(visible_text)
    if match:
        return match.group(1).strip()
    return next((line.strip() for line in visible_text.splitlines() if line.strip()), "")


def _answer_line_done(visible_text: str) -> bool:
    """Stop once an ``Answer:`` line is complete (a newline follows its text)."""
    match = _ANSWER_LINE.search(visible_text)
    return bool(match and match.group(1).strip() and visible_text.find("\n", match.start()) >= 0)


def answer_accuracy(model, tokenizer, problems: list[tuple[str, str]], *, max_new_tokens: int,
                    allow_thinking: bool = True, context: str = "") -> dict:
    """Greedy answers to ``(question, gold answer)`` problems, prompted as ``"Question: ...\\n"`` (the baking
    format) after ``context`` (e.g. a prompt being baked), read from the visible text (thoughts stripped) and
    compared with ``answers_match`` (numbers as numbers). Returns ``{"accuracy", "n", "thinking_usage", "items":
    [{question, gold, answer, correct, used_thinking, generated_tokens}]}``."""
    if not problems:
        raise ValueError("answer_accuracy needs at least one (question, answer) problem")
    prompts = [f"{context}Question: {question}\n" for question, _ in problems]
    outputs = _generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, hide_thoughts=True,
                        allow_thinking=allow_thinking, temperature=0.0, seed=0, finished=_answer_line_done)
    items = []
    for (question, gold), output in zip(problems, outputs):
        answer = visible_answer(output.visible_text)
        items.append({"question": question, "gold": gold, "answer": answer,
                      "correct": bool(answer) and answers_match(answer, gold),
                      "used_thinking": output.used_thinking, "generated_tokens": output.generated_tokens})
    return {"accuracy": sum(item["correct"] for item in items) / len(items), "n": len(items),
            "thinking_usage": thinking_usage(outputs), "items": items}
