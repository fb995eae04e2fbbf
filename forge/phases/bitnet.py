"""Phase 4, BitNet 1.58: the best model so far ternarised under the accuracy guard, packed and measured.

Input: the previous phase's ``champion`` (EvoMerge); when it wrote several models instead (a run of
``--phases cognate,bitnet``), the one with the lowest perplexity on the guard's held-out text. Text: with a
data folder, WikiText-2's one partition (train side: calibration and straight-through fine-tuning; held-out
side: the guard); without one, Phase 1's replay documents (its train side, task-world problems and text) and
its held-out documents, which no model trained on. With ``bitnet.reasoning_traces``, Phase 3's traces join the
train side. The work is ``forge.quant.run.quantize_model_dir``, run on the driver: one model at a time, and its
int8 kernels are CPU kernels. The phase passes the guard in (``benchmarks.guard.job_guard``). The summary records
every spec criterion as met or missed.
"""
from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path
from typing import Sequence

from benchmarks.guard import job_guard
from forge.artifacts import load_model_dir
from forge.criteria import missed
from forge.phases.base import PhaseContext, PhaseResult, single_input
from forge.data.heldout import HELDOUT, REPLAY
from forge.quietstar.data import REASONING, read_dataset
from forge.quant.run import (QuantizeJobConfig, next_token_scores, quantize_model_dir, text_token_ids,
                             wikitext_texts)

log = logging.getLogger(__name__)


def quantization_texts(ctx: PhaseContext, job: QuantizeJobConfig) -> tuple[list[str], list[str], str]:
    """(train side, held-out side, description) of the text this phase calibrates, heals and guards with; with
    ``job.reasoning_traces``, Phase 3's traces shuffled into the train side."""
    if job.data_dir is not None:
        train, heldout = wikitext_texts(job.data_dir)
        description = f"WikiText-2 from {job.data_dir}: train side calibrates and fine-tunes, held-out side guards"
    else:
        train, heldout = ctx.read_texts(REPLAY, max_chars=10**12), ctx.read_texts(HELDOUT, max_chars=10**12)
        description = ("no data folder: Phase 1's replay documents (train side) calibrate, heal and fine-tune, its "
                       "held-out documents guard")
    if job.reasoning_traces and REASONING in ctx.texts:
        examples, _ = read_dataset(ctx.texts[REASONING])
        train = list(train) + [example.text() for example in examples]
        random.Random(ctx.config.seed).shuffle(train)
        description += f"; Phase 3's {len(examples)} reasoning traces shuffled into the train side"
    return list(train), list(heldout), description


def choose_input(inputs: dict[str, Path], heldout: Sequence[str], job: QuantizeJobConfig) -> tuple[str, dict]:
    """The previous phase's model (``single_input``), or among several (Phase 1's three) the one with the lowest
    held-out perplexity."""
    if not inputs:
        raise ValueError("bitnet quantizes the previous phase's model; run it after cognate or evomerge")
    name = single_input(inputs)
    if name is not None:
        return name, {}
    perplexities = {}
    for name, path in inputs.items():
        model, tokenizer = load_model_dir(path)
        ids = text_token_ids(tokenizer, list(heldout), job.eval_sequences, job.seq_len)
        perplexities[name] = next_token_scores(model.float(), ids)["perplexity"]
    return min(perplexities, key=perplexities.get), perplexities


def run(ctx: PhaseContext) -> PhaseResult:
    job: QuantizeJobConfig = ctx.config.bitnet
    data_dir = job.data_dir or ctx.data_dir
    job = dataclasses.replace(job, data_dir=data_dir)
    train_texts, heldout_texts, text_source = quantization_texts(ctx, job)
    name, perplexities = choose_input(ctx.inputs, heldout_texts, job)
    print(f"[forge] bitnet: quantizing {name} ({ctx.inputs[name]}); text: {text_source}", flush=True)
    out_dir = ctx.phase_dir / "model"
    metrics = quantize_model_dir(ctx.inputs[name], out_dir, job, job_guard, texts=(train_texts, heldout_texts),
                                 extra={"input": name, "text_source": text_source})
    criteria = metrics["criteria"]
    summary = {
        "input": name,
        "input_perplexities": perplexities,
        "text_source": text_source,
        **{key: metrics[key] for key in (
            "size_category", "conservative", "compression_ratio", "weight_bytes_before", "weight_bytes_after",
            "sparsity", "guard_metric", "accuracy_before", "accuracy_quantized", "accuracy_finetuned",
            "accuracy_packed", "accuracy_drop", "heldout_before", "heldout_after", "inference_speedup",
            "inference_speedup_limit", "latency_float_s", "latency_ternary_s", "reverted_layers", "quantized_layers",
            "int8_layers", "int4_layers", "criteria")},
        "criteria_missed": missed(criteria),
    }
    return PhaseResult(outputs={"model": out_dir}, summary=summary)
