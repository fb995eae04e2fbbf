"""Agreement and speed of forge.merge against mergekit on two small Llama models.

    python benchmarks/scripts/mergekit_agreement.py --mergekit-python /work/venvs/mergekit/bin/python \
        --out benchmarks/results/mergekit_agreement.json

mergekit is not a runtime dependency: install it in a separate virtualenv and pass its interpreter
(or set MERGEKIT_PYTHON); this script re-runs itself there as a worker that imports mergekit but not forge.

Checked, per method, as the largest relative error ||ours - mergekit|| / ||mergekit|| over all tensors:
- end to end (linear, SLERP, task arithmetic, TIES): ``forge.merge.io.merge_model_dirs`` vs mergekit's
  ``run_merge`` on the same model directories;
- kernels on the same in-memory tensors (all five, DARE included): our ``merge()`` vs mergekit's merge
  kernels. DARE uses the same masks: mergekit's global RNG is seeded, before each tensor, with the seed
  our DARE gives that tensor (``forge.merge.tensor_seed``), and both draw the masks in the same order.
Timings (wall and CPU seconds): best of ``--repeats`` runs of each side's kernels over the whole state dicts,
and one end-to-end run (load, merge, save) each.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

TOLERANCE = 1e-6  # largest accepted relative error
DARE_SEED = 1234
# One configuration per method; forge.merge parameter names, translated for mergekit by the worker.
CASES = {
    "linear": {"weights": [0.3, 0.7]},
    "slerp": {"t": 0.3},
    "task_arithmetic": {"weights": [0.6, 0.9], "scale": 0.8},
    "ties": {"density": 0.4, "weights": [1.0, 0.5]},
    "dare": {"density": 0.6, "weights": [1.0, 0.5], "rescale": "l1"},
}
END_TO_END = ("linear", "slerp", "task_arithmetic", "ties")
USES_BASE = ("task_arithmetic", "ties", "dare")


def best_of(repeats: int, fn) -> tuple[object, float, float]:
    """Run ``fn`` ``repeats`` times; its last result, the best wall seconds and the best CPU seconds.

    CPU time (this process, all threads) is reported beside wall time because the machine is shared:
    wall time grows with other processes' load, CPU time much less.
    """
    wall, cpu, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall, cpu = min(wall, time.perf_counter() - start_wall), min(cpu, time.process_time() - start_cpu)
    return result, wall, cpu


# ------------------------------------------------------------------------------- worker (mergekit side)

def _mergekit_config(method: str, params: dict, dirs: dict) -> dict:
    a, b = {"model": dirs["a"]}, {"model": dirs["b"]}
    if method == "linear":
        a["parameters"], b["parameters"] = {"weight": params["weights"][0]}, {"weight": params["weights"][1]}
        return {"merge_method": "linear", "models": [a, b], "dtype": "float32"}
    if method == "slerp":
        return {"merge_method": "slerp", "base_model": dirs["a"], "models": [a, b],
                "parameters": {"t": params["t"]}, "dtype": "float32"}
    for entry, weight in zip((a, b), params["weights"]):
        entry["parameters"] = {"weight": weight, **({"density": params["density"]} if "density" in params else {})}
    config = {"merge_method": method, "base_model": dirs["base"], "models": [a, b], "dtype": "float32"}
    if "scale" in params:
        config["parameters"] = {"lambda": params["scale"]}
    return config


def _mergekit_kernels(method: str, params: dict, base: dict, a: dict, b: dict, seeds: dict) -> dict:
    from mergekit.merge_methods import registry
    from mergekit.merge_methods.base import TensorBatch, TensorGroup

    out = {}
    for name in a:
        if method == "linear":
            batch = TensorBatch((a[name].unsqueeze(0), b[name].unsqueeze(0)))
            out[name] = registry.get("linear").merge_batch(batch, weight=torch.tensor([params["weights"]]),
                                                           normalize=True)[0]
        elif method == "slerp":
            batch = TensorBatch((a[name].unsqueeze(0), b[name].unsqueeze(0)), base_index=0)
            out[name] = registry.get("slerp").merge_batch(batch, t=torch.tensor([params["t"]]))[0]
        else:
            mk_name = {"dare": "dare_linear"}.get(method, method)
            group = TensorGroup.from_tensors([base[name], a[name], b[name]], base_index=0)
            density = params.get("density", 1.0)
            kwargs = {"weight": {1: params["weights"][0], 2: params["weights"][1]},
                      "density": {1: density, 2: density}, "int8_mask": False,
                      "normalize": method == "ties", "rescale": params.get("rescale") == "l1",
                      "lambda": params.get("scale", 1.0)}
            if method == "dare":
                torch.manual_seed(seeds[name])
            out[name] = registry.get(mk_name).merge_group(group, **kwargs)
    return out


def worker(spec_path: Path) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    dirs, out_root = spec["dirs"], Path(spec["out_root"])
    tensors = {k: load_file(str(Path(v) / "model.safetensors")) for k, v in dirs.items()}
    result = {"end_to_end": {}, "kernel": {}}
    for method in END_TO_END:
        config = MergeConfiguration.model_validate(_mergekit_config(method, CASES[method], dirs))
        options = MergeOptions(copy_tokenizer=False, quiet=True, write_model_card=False)
        _, wall, cpu = best_of(1, lambda: run_merge(config, str(out_root / f"mergekit_{method}"), options))
        result["end_to_end"][method] = {"wall_s": wall, "cpu_s": cpu}
    for method, params in CASES.items():
        merged, wall, cpu = best_of(spec["repeats"], lambda: _mergekit_kernels(
            method, params, tensors["base"], tensors["a"], tensors["b"], spec["seeds"]))
        result["kernel"][method] = {"wall_s": wall, "cpu_s": cpu}
        save_file({k: v.contiguous() for k, v in merged.items()}, str(out_root / f"kernel_{method}.safetensors"))
    (out_root / "worker.json").write_text(json.dumps(result))


# --------------------------------------------------------------------------------- driver (forge side)

def _relative_errors(ours: dict, theirs: dict) -> dict:
    missing = sorted(set(theirs) ^ set(ours))
    if missing:
        raise SystemExit(f"tensor names differ between forge and mergekit outputs: {missing[:5]}")
    worst = max(float((ours[k].double() - theirs[k].double()).norm() / theirs[k].double().norm().clamp_min(1e-30))
                for k in theirs)
    max_abs = max(float((ours[k].double() - theirs[k].double()).abs().max()) for k in theirs)
    return {"max_relative_error": worst, "max_abs_error": max_abs}


def _make_models(root: Path, hidden: int, layers: int, vocab: int) -> dict:
    """A base model and two 'fine-tunes' of it (base + independent perturbations of different sizes)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                         num_attention_heads=max(1, hidden // 64) if hidden >= 64 else 2,
                         num_key_value_heads=max(1, hidden // 64) if hidden >= 64 else 2, vocab_size=vocab)
    torch.manual_seed(0)
    base = LlamaForCausalLM(config)
    dirs = {"base": root / "base"}
    base.save_pretrained(dirs["base"])
    for name, size in (("a", 0.01), ("b", 0.02)):
        model = LlamaForCausalLM(config)
        model.load_state_dict({k: v + size * torch.randn_like(v) for k, v in base.state_dict().items()})
        dirs[name] = root / name
        model.save_pretrained(dirs[name])
    return {k: str(v) for k, v in dirs.items()}


def _mergekit_python(given: str | None) -> str:
    if given:
        return given
    if os.environ.get("MERGEKIT_PYTHON"):
        return os.environ["MERGEKIT_PYTHON"]
    import importlib.util

    if importlib.util.find_spec("mergekit") is not None:
        return sys.executable
    print("error: mergekit not found. Install it in a separate venv (python -m venv /work/venvs/mergekit && "
          "/work/venvs/mergekit/bin/pip install mergekit) and pass --mergekit-python or set MERGEKIT_PYTHON.",
          file=sys.stderr)
    raise SystemExit(2)


def driver(args: argparse.Namespace) -> dict:
    from forge.merge import merge, tensor_seed
    from forge.merge.io import merge_model_dirs

    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="mergekit_agreement_"))
    try:
        dirs = _make_models(root, args.hidden, args.layers, args.vocab)
        tensors = {k: load_file(str(Path(v) / "model.safetensors")) for k, v in dirs.items()}
        seeds = {name: tensor_seed(DARE_SEED, name) for name in tensors["a"]}
        spec = {"dirs": dirs, "out_root": str(root), "seeds": seeds, "repeats": args.repeats, "threads": args.threads}
        (root / "spec.json").write_text(json.dumps(spec))
        subprocess.run([_mergekit_python(args.mergekit_python), __file__, "--worker", str(root / "spec.json")],
                       check=True)
        worker_result = json.loads((root / "worker.json").read_text())

        model = {"hidden": args.hidden, "layers": args.layers, "vocab": args.vocab,
                 "parameters": sum(t.numel() for t in tensors["a"].values())}
        report = {"load_average_before": os.getloadavg(), "tolerance": TOLERANCE, "model": model,
                  "threads": args.threads, "repeats": args.repeats, "methods": {}}
        for method, params in CASES.items():
            row = {"params": params}
            base = tensors["base"] if method in USES_BASE else None
            seed_kw = {"seed": DARE_SEED} if method == "dare" else {}
            ours, wall, cpu = best_of(args.repeats, lambda: merge(method, [tensors["a"], tensors["b"]], base=base,
                                                                  **seed_kw, **params))
            theirs = load_file(str(root / f"kernel_{method}.safetensors"))
            row["kernel"] = _relative_errors(ours, theirs)
            # How far the merge moved from model a: shows the agreement is about a non-trivial result.
            row["kernel"]["relative_change_from_a"] = _relative_errors(ours, tensors["a"])["max_relative_error"]
            row["kernel_time"] = {"forge": {"wall_s": wall, "cpu_s": cpu}, "mergekit": worker_result["kernel"][method]}
            if method in END_TO_END:
                out, wall, cpu = best_of(1, lambda: merge_model_dirs(
                    method, [dirs["a"], dirs["b"]], root / f"forge_{method}",
                    base_dir=dirs["base"] if base is not None else None, params=params))
                row["end_to_end"] = _relative_errors(load_file(str(out / "model.safetensors")),
                                                     load_file(str(root / f"mergekit_{method}" / "model.safetensors")))
                row["end_to_end_time"] = {"forge": {"wall_s": wall, "cpu_s": cpu},
                                          "mergekit": worker_result["end_to_end"][method]}
            errors = [row["kernel"]["max_relative_error"]] + (
                [row["end_to_end"]["max_relative_error"]] if "end_to_end" in row else [])
            row["agrees"] = max(errors) <= TOLERANCE
            report["methods"][method] = row
        report["all_agree"] = all(r["agrees"] for r in report["methods"].values())
        report["load_average_after"] = os.getloadavg()
        return report
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    parser.add_argument("--mergekit-python", help="interpreter of a venv with mergekit (default: $MERGEKIT_PYTHON)")
    parser.add_argument("--hidden", type=int, default=512, help="model width")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers")
    parser.add_argument("--vocab", type=int, default=8192, help="vocabulary size")
    parser.add_argument("--repeats", type=int, default=2, help="timing repeats (best is kept)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    parser.add_argument("--out", default="benchmarks/results/mergekit_agreement.json", help="JSON report path")
    args = parser.parse_args()
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    if args.worker:
        worker(Path(args.worker))
        return 0
    report = driver(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out)
    for method, row in report["methods"].items():
        e2e = row.get("end_to_end", {}).get("max_relative_error")
        times = row["kernel_time"]
        print(f"{method:16s} kernel rel err {row['kernel']['max_relative_error']:.2e}  end-to-end rel err "
              f"{'-' if e2e is None else f'{e2e:.2e}'}  kernel CPU s forge {times['forge']['cpu_s']:.3f} "
              f"mergekit {times['mergekit']['cpu_s']:.3f}  agrees={row['agrees']}")
    print(f"all_agree={report['all_agree']} -> {out}")
    return 0 if report["all_agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
