"""GPU check of the spec-size Cognate model and the GPU presets (issue 16), JSON out.

(a) train_step: one training step (AdamW) of the gtx1660 Cognate architecture (its reasoning and memory models,
    activation_checkpointing as in the preset) against a transformers GPT-2 of the same width, depth and
    vocabulary, eager and compiled (each decoder layer / block ``torch.compile``d), float32 and mixed precision
    (``forge.pretrain.trainer.resolve_precision("auto")``: bf16 on Ampere+, fp16 + gradient scaler on Turing): tokens/s,
    model-FLOPs utilisation (against a measured bf16 8192^3 matmul on a GPU, float32 1024^3 on CPU), peak memory.
(b) pipeline: ``python -m forge.pipeline --preset gtx1660`` with its steps shrunk, all six phases, under
    ``ray.gpu_memory_gib`` (6), with the peak GPU memory of every process (``nvidia-smi`` sampled every 0.5 s).

Every sub-check runs in its own subprocess with a time limit (a fresh CUDA context: its peak memory is its own),
and the JSON file is rewritten after each one, so a later failure or timeout leaves the earlier entries; an
entry that failed holds its error. Without CUDA (or with ``--tiny``) the sizes are tiny and it runs on CPU.

    python benchmarks/scripts/gpu_check.py --json OUT.json [--tiny] [--skip-pipeline | --skip-steps]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from forge.artifacts import atomic_write_json

REPO = Path(__file__).resolve().parents[2]
MODELS = ("cognate-reasoning", "cognate-memory", "gpt2")
# The gtx1660 preset with its steps shrunk: two optimizer steps per epoch, two epochs per model, small evaluations.
PIPELINE_SHRINK = [
    "cognate.train.max_steps_per_epoch=2", "cognate.train.batch_size=8", "cognate.train.eval_max_batches=2",
    "cognate.train.checkpoint_every=1", "cognate.data.items_per_dataset=200", "cognate.data.chars_per_stage=400000",
    "cognate.trunk.max_steps_per_epoch=2", "cognate.trunk.chars_per_stage=400000",
    "cognate.models=[{name: reasoning, act_threshold: 0.95, ltm_slots: 2048, seed: 42, stage_epochs: [1, 0, 1]},"
    " {name: memory, act_threshold: 0.85, ltm_slots: 8192, seed: 43, stage_epochs: [1, 0, 1]},"
    " {name: speed, act_threshold: 0.99, ltm_slots: 2048, seed: 44, stage_epochs: [1, 0, 1]}]",
    "tracking.wandb_mode=disabled",
    "evomerge.max_generations=1", "evomerge.heldout_max_chars=4000", "evomerge.perplexity_window=256",
    "evomerge.speed_batch=2", "evomerge.speed_seq_len=64", "evomerge.speed_repeats=1", "evomerge.accuracy_limit=8",
    "bitnet.seq_len=64", "bitnet.eval_sequences=16", "bitnet.finetune_sequences=8", "bitnet.latency_repeats=1",
    "bitnet.guard_limit=8",
    "quietstar.num_examples=120", "quietstar.min_examples=100", "quietstar.eval_problems=3",
    "quietstar.eval_max_new_tokens=12", "quietstar.format_bake.epochs=1", "quietstar.format_bake.mitigation_epochs=1",
    "quietstar.format_bake.seq_len=128", "quietstar.rl.episodes=2", "quietstar.rl.check_every=2",
    "quietstar.rl.check_items=2", "quietstar.rl.max_rollbacks=1", "quietstar.commonsense_limit=4",
    "quietstar.speed_prompts=2",
    "curriculum.num_levels=2", "curriculum.train_items=16", "curriculum.heldout_items=3",
    "curriculum.steps_per_level=3", "curriculum.max_new_tokens=8", "curriculum.bake_inputs=3", "curriculum.bake_retain_items=4",
    "curriculum.baking.samples_per_input=1", "curriculum.baking.max_new_tokens=8", "curriculum.tool_use_items=4",
    "tool_persona.cycles.max_iterations=2", "tool_persona.eval_actors=2", "tool_persona.tool_items=2",
    "tool_persona.validation_items=2", "tool_persona.persona_items=2", "tool_persona.tool_max_turns=1",
    "tool_persona.tool_max_new_tokens=8", "tool_persona.persona_max_new_tokens=8",
    "tool_persona.self_prompt_max_new_tokens=16", "tool_persona.bake_inputs=3",
    "tool_persona.baking.samples_per_input=1", "tool_persona.baking.max_new_tokens=8",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, required=True, help="results file (rewritten after every sub-check)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (automatic without CUDA)")
    parser.add_argument("--skip-pipeline", action="store_true", help="only the training-step checks (a)")
    parser.add_argument("--skip-steps", action="store_true", help="only the pipeline check (b)")
    parser.add_argument("--batch", type=int, default=None, help="sequences per step (default 4 on GPU, 2 tiny)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 512, 64 tiny)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per check")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    parser.add_argument("--check-timeout", type=int, default=150, help="seconds per training-step check")
    parser.add_argument("--pipeline-timeout", type=int, default=420, help="seconds for the pipeline run")
    parser.add_argument("--gpu-memory-gib", type=float, default=6.0, help="ray.gpu_memory_gib of the pipeline run")
    parser.add_argument("--models", default=",".join(MODELS), help=f"training-step models, from {MODELS}")
    parser.add_argument("--variants", default="eager,compiled", help="training-step variants: eager, compiled")
    parser.add_argument("--step-check", default=None, help=argparse.SUPPRESS)  # internal: one check, JSON spec
    args = parser.parse_args(argv)
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        parser.error(f"--models: unknown {sorted(unknown)}; valid: {', '.join(MODELS)}")
    if not args.variants or set(args.variants.split(",")) - {"eager", "compiled"}:
        parser.error("--variants: a comma-separated subset of eager,compiled")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return args


# ------------------------------------------------------------------------------------------ (a) training step

def build_model(name: str, tiny: bool, seq_len: int):
    """(model, FLOPs-per-token function of the computed ACT steps) for one of MODELS."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from forge.config import load_pipeline_config
    from forge.models import CognateConfig, CognateForCausalLM, estimate_flops_per_token

    if tiny:
        arch = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=160,
                    sliding_window=32, memory_dim=16, memory_chunk_size=16, act_max_steps=2, trm_refinements=2,
                    activation_checkpointing="layer", vocab_size=512, pad_token_id=0, bos_token_id=None,
                    eos_token_id=None)
        slots = {"cognate-reasoning": 64, "cognate-memory": 256}
    else:
        phase = load_pipeline_config("gtx1660").cognate
        arch = dict(phase.architecture, vocab_size=50257)
        slots = {f"cognate-{spec.name}": spec.ltm_slots for spec in phase.models}
    if name == "gpt2":
        config = GPT2Config(vocab_size=arch["vocab_size"], n_embd=arch["hidden_size"], n_layer=arch["num_hidden_layers"],
                            n_head=arch["num_attention_heads"], n_positions=seq_len, resid_pdrop=0.0, embd_pdrop=0.0,
                            attn_pdrop=0.0)
        from forge.models.size import gpt2_flops_per_token

        return GPT2LMHeadModel(config), lambda steps: gpt2_flops_per_token(config, seq_len)
    config = CognateConfig(**dict(arch, ltm_slots=slots[name]))
    return CognateForCausalLM(config), lambda steps: estimate_flops_per_token(config, seq_len, steps=steps)


def peak_matmul_flops(device) -> float:
    import torch

    size, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn_like(a)
    best = float("inf")
    for _ in range(4):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def train_step_check(spec: dict) -> dict:
    """One (model, compiled, precision) check, in this (sub)process."""
    import torch

    from forge.pretrain.trainer import resolve_precision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)  # OpenMP threads spin-waiting on a shared CPU slow a tiny step 10x or more
    torch.manual_seed(0)
    model, flops_per_token = build_model(spec["model"], spec["tiny"], spec["seq_len"])
    model.to(device).train()
    if spec["compiled"]:
        blocks = model.model.layers if spec["model"] != "gpt2" else model.transformer.h
        for block in blocks:
            block.compile()
    precision = resolve_precision("float32" if spec["precision"] == "float32" else
                                  ("auto" if device.type == "cuda" else "bf16"), device)
    scaler = precision.grad_scaler()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randint(0, model.config.vocab_size, (spec["batch"], spec["seq_len"]),
                          generator=torch.Generator().manual_seed(0)).to(device)
    computed_steps = []

    def step() -> float:
        synchronize(device)
        start = time.perf_counter()
        with precision.autocast():
            out = model(input_ids=batch, labels=batch)
        scaler.scale(out.loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        computed_steps.append(getattr(out, "computed_steps", None))
        return time.perf_counter() - start

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        rss_before = status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
    compile_s = step()  # the first step compiles (when compiled) and allocates the optimizer state
    for _ in range(spec["warmup"] - 1):
        step()
    times = sorted(step() for _ in range(spec["steps"]))
    median = times[len(times) // 2]
    steps = computed_steps[-1]
    flops = flops_per_token(steps)
    tokens_per_s = spec["batch"] * spec["seq_len"] / median
    peak = peak_matmul_flops(device)
    result = {**spec, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "autocast_dtype": str(precision.autocast_dtype), "first_step_s": compile_s, "step_s": median,
              "tokens_per_s": tokens_per_s, "flops_per_token": flops, "computed_act_steps": steps,
              "peak_matmul_flops_per_s": peak, "mfu": tokens_per_s * flops / peak,
              "params": sum(p.numel() for p in model.parameters())}
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        result["peak_rss_extra_gib"] = (status_kib("VmHWM") - rss_before) / 2**20
    if spec["model"] != "gpt2":
        from forge.pretrain.trainer import trainer_memory_bytes

        arch = model.config.to_dict()
        fields = {k: arch[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                       "num_attention_heads", "sliding_window", "ltm_slots", "memory_dim",
                                       "memory_chunk_size", "act_max_steps", "trm_refinements",
                                       "trm_latent_updates", "activation_checkpointing")}
        result["planner_estimate_gib"] = trainer_memory_bytes(fields, spec["batch"], spec["seq_len"],
                                                              device.type) / 2**30
    return result


def run_step_checks(args: argparse.Namespace, tiny: bool, payload: dict) -> None:
    batch = args.batch or (2 if tiny else 4)
    seq_len = args.seq_len or (64 if tiny else 512)
    for model in args.models.split(","):
        for compiled in [variant == "compiled" for variant in args.variants.split(",")]:
            for precision in ("float32", "mixed"):
                spec = {"model": model, "compiled": compiled, "precision": precision, "batch": batch,
                        "seq_len": seq_len, "steps": args.steps, "warmup": max(1, args.warmup), "tiny": tiny}
                entry = run_subprocess(["--step-check", json.dumps(spec)], args.check_timeout, spec)
                payload["train_step"].append(entry)
                atomic_write_json(args.json, payload)
                print(json.dumps(entry), flush=True)
    summarize(payload)
    atomic_write_json(args.json, payload)


def repo_env() -> dict:
    """This environment with the repository first on PYTHONPATH (the project runs from its source tree)."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def run_subprocess(extra: list[str], timeout: int, spec: dict) -> dict:
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, __file__, "--json", os.devnull, *extra], capture_output=True,
                              text=True, timeout=timeout, cwd=REPO, env=repo_env())
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout} s"}
    if done.returncode:
        return {**spec, "error": f"exit {done.returncode}: {done.stderr[-1500:]}",
                "wall_s": time.perf_counter() - started}
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(payload: dict) -> None:
    """Cognate/GPT-2 ratios of MFU and peak memory for each (compiled, precision) pair measured."""
    rows = {(e["model"], e["compiled"], e["precision"]): e for e in payload["train_step"] if "error" not in e}
    ratios = []
    for (model, compiled, precision), entry in rows.items():
        gpt2 = rows.get(("gpt2", compiled, precision))
        if model == "gpt2" or gpt2 is None:
            continue
        memory_key = "peak_memory_gib" if "peak_memory_gib" in entry else "peak_rss_extra_gib"
        ratios.append({"model": model, "compiled": compiled, "precision": precision,
                       "mfu_ratio_vs_gpt2": entry["mfu"] / gpt2["mfu"],
                       "memory_ratio_vs_gpt2": entry[memory_key] / gpt2[memory_key]})
    payload["ratios"] = ratios


# ------------------------------------------------------------------------------------------- (b) pipeline

def sample_gpu_processes(stop: threading.Event, peaks: dict, errors: list) -> None:
    """Peak used GPU memory (MiB) of every compute process, by pid, until ``stop``."""
    while not stop.is_set():
        try:
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired) as err:
            errors.append(repr(err))
            return
        for line in out.strip().splitlines():
            pid, used = (part.strip() for part in line.split(","))
            if not used.isdigit():
                continue
            record = peaks.setdefault(pid, {"peak_mib": 0, "process": _process_name(pid)})
            record["peak_mib"] = max(record["peak_mib"], int(used))
        stop.wait(0.5)


def _process_name(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160].strip()
    except OSError:
        return "?"


def run_pipeline_check(args: argparse.Namespace, tiny: bool, payload: dict) -> None:
    import torch

    out_dir = Path(tempfile.mkdtemp(prefix="gpu_check_pipeline_"))
    overrides = list(PIPELINE_SHRINK) + [f"ray.gpu_memory_gib={args.gpu_memory_gib}"]
    preset = "gtx1660"
    if tiny:  # the tiny preset with the same shrink (its own three models and BPE)
        preset = "tiny"
        overrides = [o for o in overrides if not o.startswith("cognate.models=")]
    command = [sys.executable, "-m", "forge.pipeline", "--preset", preset, "--out", str(out_dir)]
    for override in overrides:
        command += ["--set", override]
    entry = {"command": " ".join(command[1:]), "preset": preset, "out_dir": str(out_dir)}
    payload["pipeline"] = entry
    atomic_write_json(args.json, payload)
    peaks, errors, stop = {}, [], threading.Event()
    sampler = None
    if torch.cuda.is_available():
        sampler = threading.Thread(target=sample_gpu_processes, args=(stop, peaks, errors), daemon=True)
        sampler.start()
    started = time.perf_counter()
    # Its own process group: on a timeout the local Ray it started (agents, workers holding GPU memory) goes too.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                               env=repo_env(), start_new_session=True)
    try:
        output, _ = process.communicate(timeout=args.pipeline_timeout)
        entry.update(returncode=process.returncode, output_tail=output[-4000:])
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        entry.update(error=f"timed out after {args.pipeline_timeout} s", output_tail=output[-4000:])
    finally:
        stop.set()
        if sampler:
            sampler.join(timeout=5)
    entry["wall_s"] = time.perf_counter() - started
    entry["gpu_processes"] = sorted(peaks.values(), key=lambda r: -r["peak_mib"])
    if errors:
        entry["sampler_error"] = errors[0]
    manifests = sorted(out_dir.glob("*/*/manifest.json"))
    entry["phases_completed"] = sorted({p.parent.name for p in manifests})
    atomic_write_json(args.json, payload)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.step_check:
        print(json.dumps(train_step_check(json.loads(args.step_check))))
        return 0
    import torch

    tiny = args.tiny or not torch.cuda.is_available()
    payload = {"command": " ".join([Path(__file__).name, *(sys.argv[1:] if argv is None else argv)]),
               "machine": {"platform": platform.platform(), "torch": torch.__version__,
                           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
               "tiny": tiny, "train_step": []}
    atomic_write_json(args.json, payload)
    try:
        if not args.skip_steps:
            run_step_checks(args, tiny, payload)
    except Exception:  # noqa: BLE001  (a measurement script: record it, then still try the pipeline)
        payload["train_step_error"] = traceback.format_exc()[-3000:]
        atomic_write_json(args.json, payload)
    if not args.skip_pipeline:
        run_pipeline_check(args, tiny, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
