"""Reasoning traces from an OpenAI-compatible chat-completions service, under a hard cost cap.

For each seed question (with its known answer, e.g. from ``forge.quietstar.offline``) the service is
asked for a thinking block in our format; a reply is kept only if its block is well formed, uses a
strategy token, and its answer equals the known one. Kept examples are appended to a JSONL file, one
fsynced line each; the ``.meta.json`` sidecar holds the ledger (money spent, requests, next seed).

Money is never under-counted: before each request the worst case it could cost (prompt bytes, an upper
bound on its tokens, plus ``max_tokens``) must fit under the cap; the ledger is written before the
example it paid for; a request that timed out or lost its connection after sending is charged at the
worst case, since the service may have billed it. A restart resumes from the ledger and the file.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from forge.artifacts import atomic_write_bytes, atomic_write_json, read_json
from forge.data.readers import number_to_str
from forge.quietstar.data import (ReasoningExample, append_line, dataset_metadata, drop_torn_tail, encode_line,
                                  metadata_path, read_examples, thinking_problem)
from forge.quietstar.tokens import STRATEGY_MEANINGS, THINK_END, THINK_START, strategies_in

log = logging.getLogger(__name__)

# Tokens a chat format adds around each message (role markers); generous for every known format.
MESSAGE_OVERHEAD_TOKENS = 16
_CHOICE_ANSWER = re.compile(r"^\(([A-H])\)\s*(.*)$", re.S)


class CostCapReached(RuntimeError):
    """The next request could push the spend past the configured cap."""


class ApiError(RuntimeError):
    """The service refused a request or kept failing."""


@dataclass(frozen=True)
class SeedQuestion:
    """A question with a known answer to ask the service about."""

    id: str  # unique id, e.g. "gsm8k/train-12"
    question: str  # the problem text
    answer: str  # the known final answer the trace must reach
    source: str  # dataset it comes from


def seeds_from(examples: Sequence[ReasoningExample]) -> list[SeedQuestion]:
    """Seed questions from existing examples (their questions and known answers)."""
    return [SeedQuestion(example.id, example.question, example.answer, example.source) for example in examples]


@dataclass
class ApiGeneratorConfig:
    """Where to send requests, what they may cost, and where the examples go."""

    endpoint: str  # base URL of the OpenAI-compatible API, e.g. "https://api.openai.com/v1"
    model: str  # model name sent with each request
    output: Path  # JSONL file the examples are appended to (its sidecar: <output>.meta.json)
    price_per_1k_prompt_tokens: float  # USD per 1000 prompt tokens
    price_per_1k_completion_tokens: float  # USD per 1000 completion tokens
    cost_limit_usd: float = 200.0  # hard cap on the total spend across restarts (spec: --cost-limit 200)
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the API key
    max_tokens: int = 512  # completion tokens per request (bounds its cost)
    temperature: float = 0.7  # sampling temperature sent to the service
    max_retries: int = 5  # retries of a request after 429, 5xx, timeouts or dropped connections
    backoff_seconds: float = 2.0  # wait before the first retry; doubles each retry
    timeout_seconds: float = 120.0  # per-request socket timeout

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        self.endpoint = self.endpoint.rstrip("/")
        if not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint {self.endpoint!r} must be an http(s) URL such as https://api.openai.com/v1")
        if min(self.price_per_1k_prompt_tokens, self.price_per_1k_completion_tokens) < 0:
            raise ValueError("prices per 1k tokens must be >= 0 (take them from the provider's price list)")
        if self.cost_limit_usd <= 0:
            raise ValueError(f"cost_limit_usd must be > 0, got {self.cost_limit_usd}")
        if self.max_tokens < 1 or self.max_retries < 0 or self.backoff_seconds < 0 or self.timeout_seconds <= 0:
            raise ValueError("max_tokens >= 1, max_retries >= 0, backoff_seconds >= 0 and timeout_seconds > 0 "
                             "are required")


SYSTEM_PROMPT = (
    "You write step-by-step reasoning for training a small language model. Reply in exactly this format:\n"
    f"{THINK_START}\n<strategy token> one line of reasoning\n...\n{THINK_END}\nAnswer: <final answer>\n"
    "Start every line inside the block with one of these strategy tokens, choosing those that fit:\n"
    + "\n".join(f"{token}: {meaning}" for token, meaning in STRATEGY_MEANINGS.items())
    + "\nThe final answer must equal the reference answer; do not mention that a reference was given."
)


def worst_case_usd(config: ApiGeneratorConfig, messages: list[dict[str, str]]) -> float:
    """Most a request could cost: every prompt byte a token (BPE tokens are >= 1 byte), plus max_tokens."""
    prompt_tokens = sum(len(m["content"].encode("utf-8")) + MESSAGE_OVERHEAD_TOKENS for m in messages)
    return (prompt_tokens * config.price_per_1k_prompt_tokens
            + config.max_tokens * config.price_per_1k_completion_tokens) / 1000.0


def request_messages(seed: SeedQuestion) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"Question: {seed.question}\nReference answer: {seed.answer}"}]


def _normal(text: str) -> str:
    return " ".join(text.strip().rstrip(".").split()).casefold()


def _as_number(text: str) -> float | None:
    try:
        return float(number_to_str(text.strip().rstrip(".").lstrip("$")))
    except ValueError:
        return None


def answers_match(given: str, expected: str) -> bool:
    """Same answer: equal as numbers, as normalised text, or (for "(B) text" choices) by letter or text."""
    number, expected_number = _as_number(given), _as_number(expected)
    if number is not None and expected_number is not None:
        return abs(number - expected_number) <= 1e-6 * max(1.0, abs(expected_number))
    if _normal(given) == _normal(expected):
        return True
    choice = _CHOICE_ANSWER.match(expected.strip())
    if choice:
        letter, text = choice.groups()
        return _normal(given) in {letter.casefold(), f"({letter.casefold()})", _normal(text)}
    return False


def parse_reply(content: str) -> tuple[str, str]:
    """``(thinking block, answer)`` from a reply; ValueError naming what is missing."""
    start = content.find(THINK_START)
    end = content.find(THINK_END, start + 1)
    if start < 0 or end < 0:
        raise ValueError(f"no {THINK_START} ... {THINK_END} block")
    thinking = content[start:end + len(THINK_END)]
    problem = thinking_problem(thinking)
    if problem:
        raise ValueError(f"thinking block {problem}")
    match = re.search(r"Answer:\s*(.+)", content[end + len(THINK_END):], re.S)
    if not match:
        raise ValueError("no 'Answer:' after the thinking block")
    return thinking, match.group(1).strip()


class ApiReasoningGenerator:
    """Examples from an OpenAI-compatible service, resumable and capped (see module doc)."""

    def __init__(self, config: ApiGeneratorConfig, seeds: Sequence[SeedQuestion]):
        if not seeds:
            raise ValueError("ApiReasoningGenerator needs seed questions with known answers "
                             "(e.g. seeds_from(list(OfflineReasoningGenerator().generate(n))))")
        self.config = config
        self.seeds = list(seeds)
        self.name = f"api:{config.model}"
        self._api_key = os.environ.get(config.api_key_env)
        if not self._api_key:
            raise ValueError(f"no API key: set the environment variable {config.api_key_env} "
                             "(or ApiGeneratorConfig.api_key_env to the variable that holds it)")
        self.examples: list[ReasoningExample] = []
        self.ledger: dict[str, Any] = {"endpoint": config.endpoint, "model": config.model, "spent_usd": 0.0,
                                       "requests": 0, "next_seed": 0, "rejected": {}}
        self._resume()

    # ------------------------------------------------------------ state on disk

    def _resume(self) -> None:
        output = self.config.output
        if not output.exists():
            return
        meta_file = metadata_path(output)
        if not meta_file.is_file():
            raise FileNotFoundError(
                f"{output} exists without its ledger {meta_file}, so the money already spent is unknown: "
                "restore the ledger, or move the file away to start a new run")
        ledger = read_json(meta_file).get("api") or {}
        if (ledger.get("model"), ledger.get("endpoint")) != (self.config.model, self.config.endpoint):
            raise ValueError(f"{output} was not written by {self.config.model} at {self.config.endpoint} (its ledger: "
                             f"{ledger.get('model')} at {ledger.get('endpoint')}): choose another output file")
        drop_torn_tail(output)
        self.examples = read_examples(output)
        self.ledger = dict(ledger)

    def _save(self) -> None:
        atomic_write_json(metadata_path(self.config.output), dataset_metadata(self.examples, {"api": self.ledger}))

    def _charge(self, usd: float) -> None:
        self.ledger["spent_usd"] += usd
        self.ledger["requests"] += 1
        self._save()

    def _reject(self, reason: str) -> None:
        self.ledger["rejected"][reason] = self.ledger["rejected"].get(reason, 0) + 1

    # ------------------------------------------------------------ requests

    def _cost_of(self, usage: dict[str, Any] | None, worst: float) -> float:
        if not usage or "prompt_tokens" not in usage or "completion_tokens" not in usage:
            return worst  # no usage reported: assume the most it could have cost
        return (usage["prompt_tokens"] * self.config.price_per_1k_prompt_tokens
                + usage["completion_tokens"] * self.config.price_per_1k_completion_tokens) / 1000.0

    def _check_budget(self, worst: float) -> None:
        spent, cap = self.ledger["spent_usd"], self.config.cost_limit_usd
        if spent + worst > cap:
            raise CostCapReached(
                f"stopping before a request that could cost up to ${worst:.4f}: ${spent:.4f} of the ${cap:.2f} cap "
                f"is spent. The {len(self.examples)} examples so far are in {self.config.output}; raise "
                "cost_limit_usd and run again to continue")

    def _post(self, messages: list[dict[str, str]], worst: float) -> dict[str, Any] | None:
        """The service's JSON reply (None if it was not a JSON object), retrying transient failures."""
        body = json.dumps({"model": self.config.model, "messages": messages, "max_tokens": self.config.max_tokens,
                           "temperature": self.config.temperature}).encode("utf-8")
        url = f"{self.config.endpoint}/chat/completions"
        last_error: Exception | None = None
        for attempt in range(self.config.max_retries + 1):
            self._check_budget(worst)
            delay = self.config.backoff_seconds * 2 ** attempt
            request = urllib.request.Request(url, data=body, method="POST", headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {self._api_key}"})
            try:
                with urllib.request.urlopen(request, timeout=self.config.timeout_seconds) as response:
                    raw = response.read()
                try:
                    reply = json.loads(raw)
                except json.JSONDecodeError:
                    reply = None
                if not isinstance(reply, dict):
                    self._charge(worst)  # answered but unreadable: assume the most it could have cost
                    return None
                return reply
            except urllib.error.HTTPError as err:
                if err.code != 429 and err.code < 500:
                    detail = err.read()[:300].decode("utf-8", "replace")
                    raise ApiError(f"{url} answered HTTP {err.code}: {detail}; check the endpoint, the model name "
                                   f"and the key in ${self.config.api_key_env}") from err
                retry_after = err.headers.get("Retry-After", "") if err.headers else ""
                if retry_after.replace(".", "", 1).isdigit():
                    delay = max(delay, float(retry_after))
                last_error = err
            except urllib.error.URLError as err:
                if not isinstance(err.reason, ConnectionRefusedError):
                    self._charge(worst)  # the request may have reached the service and been billed
                last_error = err
            except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
                self._charge(worst)  # lost mid-reply: the service may have billed it
                last_error = err
            if attempt < self.config.max_retries:
                log.warning("request to %s failed (%s); retry %d/%d in %.1fs", url, last_error, attempt + 1,
                            self.config.max_retries, delay)
                time.sleep(delay)
        raise ApiError(f"{url} failed {self.config.max_retries + 1} times, last: {last_error}; the examples so far "
                       f"are in {self.config.output}, run again to resume")

    def _ask(self, seed: SeedQuestion) -> ReasoningExample | None:
        messages = request_messages(seed)
        worst = worst_case_usd(self.config, messages)
        reply = self._post(messages, worst)
        if reply is None:
            self._reject("reply is not a JSON object")
            return None
        self._charge(self._cost_of(reply.get("usage"), worst))
        try:
            content = reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            self._reject("not a chat-completions reply")
            return None
        try:
            thinking, answer = parse_reply(content)
        except ValueError as err:
            self._reject(str(err))
            return None
        if not answers_match(answer, seed.answer):
            self._reject("answer differs from the known one")
            return None
        return ReasoningExample(id=f"api/{seed.id}", question=seed.question, thinking=thinking, answer=seed.answer,
                                strategies=tuple(strategies_in(thinking)), source=seed.source, generator=self.name)

    def generate(self, n: int) -> Iterator[ReasoningExample]:
        """The examples already in the output file, then new ones until there are ``n`` or the seeds run out.

        Raises CostCapReached before a request that could exceed the cap (everything paid for is kept).
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        yield from self.examples[:n]
        if not self.config.output.exists():
            atomic_write_bytes(self.config.output, b"")
            self._save()
        while len(self.examples) < n and self.ledger["next_seed"] < len(self.seeds):
            seed = self.seeds[self.ledger["next_seed"]]
            self._check_budget(worst_case_usd(self.config, request_messages(seed)))
            # Advanced before asking: after a crash mid-request that seed is skipped, never paid for twice.
            self.ledger["next_seed"] += 1
            self._save()
            example = self._ask(seed)
            if example is None:
                self._save()
                continue
            append_line(self.config.output, encode_line(example))
            self.examples.append(example)
            self._save()
            yield example
