"""A Cognate model's outputs under the code of a tree, for checking a speed change bit for bit, and their timings.

Run it once per tree on the same model (``PYTHONPATH`` picks the tree), then compare the two files:

    PYTHONPATH=/tmp/before python benchmarks/scripts/cognate_outputs.py run --model DIR --out /tmp/before.pt
    PYTHONPATH=. python benchmarks/scripts/cognate_outputs.py run --model DIR --out /tmp/after.pt
    python benchmarks/scripts/cognate_outputs.py compare /tmp/before.pt /tmp/after.pt --json OUT

Outputs: one training step's loss, every gradient and the attention's max logits (batch 8 x 128, the trainer's
call); evaluation logits of three rows with left and right padding; greedy generation of 40 tokens for four
left-padded prompts (the cache path). Timings: the training step, an evaluation forward (8 x 128) and the
generation, each the median of ``--repeats`` after one warm-up, on ``--threads`` threads.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch



def _median_s(function, repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(model_dir: str, out: str, threads: int, repeats: int) -> None:
    import forge  # noqa: F401  (registers the Cognate architecture, from the tree on PYTHONPATH)
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = torch.randint(5, model.config.vocab_size - 1, (8, 128), generator=torch.Generator().manual_seed(0))
    result: dict = {"forge": forge.__file__, "model": model_dir, "threads": threads}

    def training_step():
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids, return_logits=False).loss
        loss.backward()
        return loss

    model.train()
    result["loss"] = training_step().detach()
    result["grads"] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    result["max_logits"] = [a.max_attn_logit for a in model.attention_modules()]
    result["training_step_s"] = _median_s(training_step, repeats)
    model.zero_grad(set_to_none=True)
    model.eval()
    mask = torch.ones(3, 70, dtype=torch.long)
    mask[1, :5] = 0  # left padding
    mask[2, -3:] = 0  # right padding
    prompt_mask = torch.ones(4, 20, dtype=torch.long)
    prompt_mask[0, :4] = 0
    prompt_mask[2, :9] = 0
    with torch.no_grad():
        result["logits"] = model(input_ids=ids[:3, :70], attention_mask=mask).logits

        def generate():
            return model.generate(input_ids=ids[4:, :20], attention_mask=prompt_mask, max_new_tokens=40,
                                  do_sample=False, pad_token_id=0)

        result["generated"] = generate()
        result["generation_s"] = _median_s(generate, repeats)
        result["evaluation_forward_s"] = _median_s(lambda: model(input_ids=ids), repeats)
    torch.save(result, out)
    print({k: v for k, v in result.items() if k.endswith("_s")})


def compare(before: str, after: str, json_path: str | None) -> int:
    a, b = torch.load(before), torch.load(after)
    same = {
        "loss": torch.equal(a["loss"], b["loss"]),
        "gradients": a["grads"].keys() == b["grads"].keys()
        and all(torch.equal(a["grads"][name], b["grads"][name]) for name in a["grads"]),
        "max_logits": a["max_logits"] == b["max_logits"],
        "evaluation_logits": torch.equal(a["logits"], b["logits"]),
        "generated_tokens": torch.equal(a["generated"], b["generated"]),
    }
    timings = {key: {"before": a[key], "after": b[key], "after_over_before": b[key] / a[key]}
               for key in ("training_step_s", "evaluation_forward_s", "generation_s")}
    report = {"command": " ".join(sys.argv), "before": a["forge"], "after": b["forge"], "model": a["model"],
              "threads": a["threads"], "bit_identical": same, "timings": timings}
    text = json.dumps(report, indent=2)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")
    return 0 if all(same.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="save the outputs and timings of the tree on PYTHONPATH")
    run_parser.add_argument("--model", required=True, help="a Cognate model directory")
    run_parser.add_argument("--out", required=True, help="where to save them (torch.save)")
    run_parser.add_argument("--threads", type=int, default=2)
    run_parser.add_argument("--repeats", type=int, default=5)
    compare_parser = sub.add_parser("compare", help="bit-for-bit equality of two saved runs, and their timings")
    compare_parser.add_argument("before")
    compare_parser.add_argument("after")
    compare_parser.add_argument("--json", help="where to write the comparison")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.model, args.out, args.threads, args.repeats)
        return 0
    return compare(args.before, args.after, args.json)


if __name__ == "__main__":
    sys.exit(main())
