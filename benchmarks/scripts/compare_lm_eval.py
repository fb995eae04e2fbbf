"""Agreement and speed against lm-evaluation-harness on the same checkpoint and the same data files.

    python benchmarks/scripts/compare_lm_eval.py --lm-eval-python /work/venvs/lmeval/bin/python \
        --data-dir ../shared/data --out benchmarks/results/lm_eval_agreement.json

- ARC-Easy, HellaSwag and PIQA zero-shot: ``acc``/``acc_norm`` of both harnesses, the number of items
  whose prediction differs and the largest per-choice log-likelihood difference. Each harness runs
  once as its own process (``python -m benchmarks`` and lm-eval's ``simple_evaluate``), timed from
  start to exit (wall and CPU time), with the same thread count and batch size.
- HellaSwag is also run through lm-eval on the text our reader gives (``ctx`` as stored), to separate
  a harness difference from a data difference (lm-eval capitalises ``ctx_b``; the local reader keeps
  only ``ctx``).
- GSM8K: lm-eval's strict and flexible regex filters and its exact match, against ours, on the
  1319 reference answers and on the same answers with the ``#### N`` line removed.

lm-eval is not a project dependency: install it in a separate virtualenv
(``python3 -m venv /work/venvs/lmeval && /work/venvs/lmeval/bin/pip install torch==2.13.0 lm-eval==0.4.13``).
Without ``--model`` a GPT-2-architecture checkpoint with seeded random weights is written and used.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Runs in the lm-eval virtualenv: simple_evaluate on local task YAMLs, per-item records to JSON.
LM_EVAL_DRIVER = r'''
import json, sys, time
start = time.perf_counter()
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager
args = json.loads(sys.argv[1])
results = simple_evaluate(model="hf", model_args=f"pretrained={args['model']},dtype=float32",
                          tasks=args["tasks"], num_fewshot=0, batch_size=args["batch_size"], device="cpu",
                          task_manager=TaskManager(include_path=args["include"]), log_samples=True)
out = {}
for task in args["tasks"]:
    metrics = results["results"][task]
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    out[task] = {"acc": metrics["acc,none"], "acc_norm": metrics["acc_norm,none"], "n": len(samples),
                 "loglikelihoods": [[float(r[0]) for r in s["filtered_resps"]] for s in samples],
                 "item_acc": [s["acc"] for s in samples], "item_acc_norm": [s["acc_norm"] for s in samples]}
out["_inner_wall_s"] = time.perf_counter() - start
json.dump(out, open(args["out"], "w"))
'''

# Runs in the lm-eval virtualenv: lm-eval's GSM8K filters and exact match on given answer texts.
GSM8K_DRIVER = r'''
import json, sys
from lm_eval.filters.extraction import RegexFilter
from lm_eval.api.metrics import exact_match_hf_evaluate
args = json.load(open(sys.argv[1]))
texts, references = args["texts"], args["references"]
strict = RegexFilter(regex_pattern=r"#### (\-?[0-9\.\,]+)", group_select=0)
flexible = RegexFilter(regex_pattern=r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1)
out = {}
for name, regex in (("strict", strict), ("flexible", flexible)):
    picked = [r[0] for r in regex.apply([[t] for t in texts], [{}] * len(texts))]
    matches = [float(exact_match_hf_evaluate([p], [r], regexes_to_ignore=[",", "\\$", "(?s).*#### ", "\\.$"],
                                             ignore_case=True, ignore_punctuation=False)["exact_match"])
               for p, r in zip(picked, references)]
    out[name] = {"extracted": picked, "match": matches}
json.dump(out, open(args["out"], "w"))
'''

TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data_file}
test_split: test
output_type: multiple_choice
{body}
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""

HELLASWAG_UTILS = '''"""lm-eval's HellaSwag preprocessing, and the same on the stored ``ctx`` (what the local reader keeps)."""
from lm_eval.tasks.hellaswag.utils import preprocess, process_docs  # noqa: F401


def process_docs_ctx(dataset):
    def _process_doc(doc):
        return {"query": preprocess(doc["activity_label"] + ": " + doc["ctx"]),
                "choices": [preprocess(ending) for ending in doc["endings"]], "gold": int(doc["label"])}
    return dataset.map(_process_doc)
'''


def _write_lm_eval_tasks(include: Path, data_dir: Path, work: Path) -> None:
    from forge.data.readers import read_piqa

    include.mkdir(parents=True, exist_ok=True)
    # PIQA's labels live in a separate file; lm-eval gets one jsonl with them joined (our reader).
    piqa = work / "piqa_valid_labeled.jsonl"
    with open(piqa, "w", encoding="utf-8") as handle:
        for doc in read_piqa(data_dir):
            handle.write(json.dumps({"goal": doc["question"], "sol1": doc["choices"][0], "sol2": doc["choices"][1],
                                     "label": doc["label"]}) + "\n")
    hellaswag = data_dir / "hellaswag" / "hellaswag_val_subset1000.jsonl"
    tasks = {
        "local_arc_easy": (data_dir / "arc" / "arc_easy_test.jsonl",
                           'doc_to_text: "{{query}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: gold'),
        "local_piqa": (piqa, 'doc_to_text: "Question: {{goal}}\\nAnswer:"\ndoc_to_choice: "{{[sol1, sol2]}}"\n'
                             "doc_to_target: label"),
        "local_hellaswag": (hellaswag, 'process_docs: !function utils.process_docs\ndoc_to_text: "{{query}}"\n'
                                       'doc_to_choice: "choices"\ndoc_to_target: "{{gold}}"'),
        "local_hellaswag_ctx": (hellaswag, 'process_docs: !function utils.process_docs_ctx\n'
                                           'doc_to_text: "{{query}}"\ndoc_to_choice: "choices"\n'
                                           'doc_to_target: "{{gold}}"'),
    }
    for name, (data_file, body) in tasks.items():
        (include / f"{name}.yaml").write_text(TASK_YAML.format(name=name, data_file=data_file, body=body))
    (include / "utils.py").write_text(HELLASWAG_UTILS)


def _make_model(out_dir: Path) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from forge.artifacts import save_model_dir
    from forge.data.tokenizer import load_gpt2_tokenizer

    tokenizer = load_gpt2_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=128, n_layer=4, n_head=4, vocab_size=len(tokenizer), n_positions=1024))
    return save_model_dir(model, tokenizer, out_dir, phase="compare_lm_eval")


def _run(command: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run a command to completion; its wall time and CPU time (user + system, children included).

    CPU time is reported beside wall time because a shared machine's load changes wall time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "load_average_1min": os.getloadavg()[0]}


def _compare_items(ours: dict, theirs: dict) -> dict:
    ours_samples = ours["samples"]
    n = len(ours_samples)
    if n != theirs["n"]:
        raise RuntimeError(f"item counts differ: ours {n}, lm-eval {theirs['n']}")
    max_diff = max(abs(a - b) for sample, lls in zip(ours_samples, theirs["loglikelihoods"])
                   for a, b in zip(sample["loglikelihoods"], lls))
    return {
        "n_items": n,
        "ours": {"acc": ours["metrics"]["acc"], "acc_norm": ours["metrics"]["acc_norm"]},
        "lm_eval": {"acc": theirs["acc"], "acc_norm": theirs["acc_norm"]},
        "items_with_different_acc": sum(s["acc"] != t for s, t in zip(ours_samples, theirs["item_acc"])),
        "items_with_different_acc_norm": sum(s["acc_norm"] != t for s, t in zip(ours_samples, theirs["item_acc_norm"])),
        "max_abs_loglikelihood_difference": max_diff,
    }


def _gsm8k_agreement(lm_eval_python: str, data_dir: Path, work: Path, env: dict[str, str]) -> dict:
    from benchmarks import scoring
    from forge.data.readers import read_gsm8k

    docs = read_gsm8k(data_dir, split="test")
    variants = {"reference_answers": [doc["answer"] for doc in docs],
                "without_final_line": [doc["answer"].rsplit("####", 1)[0] for doc in docs]}
    report = {}
    for variant, texts in variants.items():
        out = work / f"gsm8k_{variant}.json"
        payload = work / f"gsm8k_{variant}_input.json"  # too long for a command line
        payload.write_text(json.dumps({"texts": texts, "references": [doc["answer"] for doc in docs], "out": str(out)}))
        _run([lm_eval_python, "-c", GSM8K_DRIVER, str(payload)], env)
        theirs = json.loads(out.read_text())
        entry = {"n": len(texts)}
        for name, extract in (("strict", scoring.extract_strict), ("flexible", scoring.extract_flexible)):
            ours_extracted = [extract(text) for text in texts]
            ours_match = [float(scoring.number_match(p, doc["answer"])) for p, doc in zip(ours_extracted, docs)]
            entry[name] = {
                "same_extraction": sum(a == b for a, b in zip(ours_extracted, theirs[name]["extracted"])),
                "same_exact_match": sum(a == b for a, b in zip(ours_match, theirs[name]["match"])),
                "exact_match_ours": sum(ours_match) / len(texts),
                "exact_match_lm_eval": sum(theirs[name]["match"]) / len(texts),
            }
        report[variant] = entry
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm-eval-python", required=True, help="python of the virtualenv with lm-eval 0.4.13")
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("FORGE_DATA_DIR"),
                        help="reference data folder (default $FORGE_DATA_DIR)")
    parser.add_argument("--model", type=Path, default=None, help="HF model dir (default: a seeded random GPT-2)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/compare_lm_eval"), help="scratch folder")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "lm_eval_agreement.json")
    parser.add_argument("--batch-size", type=int, default=32, help="same for both harnesses")
    parser.add_argument("--threads", type=int, default=2, help="OMP/torch threads, same for both")
    parser.add_argument("--reuse-runs", action="store_true",
                        help="analyse the run files already in --work-dir instead of running both harnesses again; "
                             "times then come from inside the runs (our CLI's wall_s, the lm-eval driver's wall)")
    args = parser.parse_args(argv)
    if args.data_dir is None or not Path(args.data_dir).is_dir():
        parser.error("pass --data-dir (or set FORGE_DATA_DIR) to the reference data folder")
    if not Path(args.lm_eval_python).is_file():
        parser.error(f"{args.lm_eval_python} not found: install lm-eval==0.4.13 in a separate virtualenv")

    data_dir = Path(args.data_dir).resolve()
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    model_dir = args.model.resolve() if args.model else _make_model(work / "model")
    include = work / "lm_eval_tasks"
    _write_lm_eval_tasks(include, data_dir, work)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_CACHE": str(work / "hf_datasets_cache")}

    ours_json = work / "ours.json"
    ours_command = [sys.executable, "-m", "benchmarks", "--model", str(model_dir), "--tasks", "arc_easy,hellaswag,piqa",
                    "--num-fewshot", "0", "--batch-size", str(args.batch_size), "--data-dir", str(data_dir),
                    "--log-samples", "--json", str(ours_json)]
    theirs_json = work / "lm_eval.json"
    ctx_json = work / "lm_eval_hellaswag_ctx.json"
    tasks = ["local_arc_easy", "local_hellaswag", "local_piqa"]
    payload = {"model": str(model_dir), "tasks": tasks, "batch_size": args.batch_size, "include": str(include),
               "out": str(theirs_json)}
    if not args.reuse_runs:
        ours_time = _run(ours_command, env)
        theirs_time = _run([args.lm_eval_python, "-c", LM_EVAL_DRIVER, json.dumps(payload)], env)
        _run([args.lm_eval_python, "-c", LM_EVAL_DRIVER, json.dumps({**payload, "tasks": ["local_hellaswag_ctx"],
                                                                       "out": str(ctx_json)})], env)

    ours_run = json.loads(ours_json.read_text())
    ours = ours_run["tasks"]
    theirs = json.loads(theirs_json.read_text())
    ctx = json.loads(ctx_json.read_text())
    if args.reuse_runs:
        # Inside-the-run wall times: from after imports to the end for ours, from before imports for lm-eval.
        ours_time = {"wall_s": ours_run["wall_s"], "source": "wall_s in our CLI's JSON (model load + evaluate)"}
        theirs_time = {"wall_s": theirs["_inner_wall_s"],
                       "source": "driver wall time, imports + simple_evaluate (lm_eval.json _inner_wall_s)"}
    report = {
        "model": str(model_dir),
        "commands": {"ours": " ".join(ours_command), "lm_eval": "simple_evaluate(model='hf', ...) via "
                     f"{args.lm_eval_python}, tasks {tasks}, batch_size {args.batch_size}, num_fewshot 0"},
        "threads": args.threads,
        "batch_size": args.batch_size,
        "tasks": {
            "arc_easy": _compare_items(ours["arc_easy"], theirs["local_arc_easy"]),
            "hellaswag": _compare_items(ours["hellaswag"], theirs["local_hellaswag"]),
            "hellaswag_same_text": _compare_items(ours["hellaswag"], ctx["local_hellaswag_ctx"]),
            "piqa": _compare_items(ours["piqa"], theirs["local_piqa"]),
        },
        "gsm8k_extraction": _gsm8k_agreement(args.lm_eval_python, data_dir, work, env),
        "time": {"ours": ours_time, "lm_eval": theirs_time},
        "speedup_wall": theirs_time["wall_s"] / ours_time["wall_s"],
    }
    if "cpu_s" in ours_time:
        report["speedup_cpu"] = theirs_time["cpu_s"] / ours_time["cpu_s"]
    from forge.artifacts import atomic_write_json

    atomic_write_json(args.out, report)
    print(json.dumps({key: report.get(key) for key in ("tasks", "time", "speedup_wall", "speedup_cpu")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
