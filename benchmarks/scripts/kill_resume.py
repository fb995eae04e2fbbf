"""Kill the pipeline's driver at a random moment in each phase, re-run the same command, and check that it
survives: JSON out.

Usage:
    python benchmarks/scripts/kill_resume.py --out /tmp/kill-resume --json kill_resume.json \
        [--phases cognate,evomerge] [--interrupt quietstar,bitnet] [--signals KILL,TERM] [--seed 0]

The command is the shrunken pipeline of tests/test_pipeline.py (``SMALL``, with the reference data folder)
in a private local Ray, as a user runs it. First an uninterrupted reference run gives each phase's wall time
and output digests. Then, in a second run directory, for each phase in turn and each signal: start the
command, wait until the phase starts, wait a random fraction (0.1-0.9) of the phase's reference wall time,
send the signal to the driver; after a SIGKILL the rest of its process session (its local Ray) is killed
too, as when the machine is lost. The next start of the same command must then, without redoing any phase
that had completed (manifest ``started_unix``), complete the interrupted phase with outputs that verify
against their hashes. SIGTERM must also end the command with exit code 143 and a message naming the phase
and saying to run the command again. At the end the command runs to completion; every output is compared
with the reference run's digests (equal where a phase is deterministic; the speed terms of EvoMerge's
fitness and anything downstream of them are measured times, so those phases may legitimately differ).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from forge.phases import PHASES  # noqa: E402
from forge.pipeline import finished_outputs  # noqa: E402
from test_pipeline import SMALL  # noqa: E402  (the shrunken config the pipeline tests use)


def phase_started_line(phase: str) -> str:
    """How the pipeline's console line that starts ``phase`` begins (forge.pipeline.run_pipeline)."""
    return f"[forge] {phase}: starting: "


class Launch:
    """One start of the pipeline command, its output lines timestamped as they arrive."""

    def __init__(self, cmd: list[str], env: dict[str, str]):
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, cwd=ROOT)
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.time(), line.rstrip("\n")))

    def wait_for(self, text: str, timeout: float) -> float | None:
        """When a line containing ``text`` appeared (None: the process ended or the timeout passed first)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for stamp, line in list(self.lines):
                if text in line:
                    return stamp
            if self.proc.poll() is not None:
                self.reader.join(5)
                return next((s for s, line in self.lines if text in line), None)
            time.sleep(0.05)
        return None

    def running_phase(self) -> str | None:
        """The phase the driver was in at its last line (started and not completed)."""
        current = None
        for _, line in self.lines:
            for phase in PHASES:
                if line.startswith(phase_started_line(phase)):
                    current = phase
                elif line.startswith(f"[forge] {phase}: complete") and current == phase:
                    current = None
        return current

    def finish(self, timeout: float) -> int:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_session()
        self.reader.join(10)
        self.kill_session()
        return self.proc.returncode

    def kill_session(self) -> None:
        """SIGKILL every process left in the command's session (its local Ray): they are ours, by session id."""
        for pid in psutil.pids():
            try:
                if os.getsid(pid) == self.proc.pid:
                    os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue
        if self.proc.poll() is None:
            self.proc.wait(10)

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


def phase_states(run_dir: Path) -> dict[str, dict]:
    """Each phase's manifest status and start time."""
    states = {}
    for phase in PHASES:
        path = run_dir / phase / "manifest.json"
        if path.is_file():
            manifest = json.loads(path.read_text())
            states[phase] = {"status": manifest["status"], "started_unix": manifest["started_unix"]}
    return states


def check_kept(run_dir: Path, before: dict[str, dict]) -> list[str]:
    """Problems with the phases that were complete before a start: redone, no longer complete, or altered."""
    after = phase_states(run_dir)
    problems = []
    for phase, state in before.items():
        if state["status"] != "complete":
            continue
        if after.get(phase, {}).get("started_unix") != state["started_unix"]:
            problems.append(f"{phase} was redone")
        elif finished_outputs(run_dir / phase) is None:
            problems.append(f"{phase}'s outputs no longer verify")
    return problems


def output_digests(run_dir: Path) -> dict[str, dict[str, str]]:
    digests = {}
    for phase in PHASES:
        path = run_dir / phase / "manifest.json"
        if path.is_file():
            manifest = json.loads(path.read_text())
            if manifest["status"] == "complete":
                digests[phase] = {k: v["digest"] for k, v in manifest["outputs"].items()}
    return digests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="parent folder for the two run directories (emptied first)")
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--phases", default=",".join(PHASES), help="phases to run, in order")
    parser.add_argument("--interrupt", default=None, help="the phases to interrupt (default: every one run)")
    parser.add_argument("--signals", default="TERM,KILL", help="signals sent in each phase, in order")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random moments")
    parser.add_argument("--data-dir", default=os.environ.get("FORGE_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--timeout", type=float, default=1800, help="seconds any one start may take")
    args = parser.parse_args()
    phases = [p for p in args.phases.split(",") if p]
    interrupted = [p for p in args.interrupt.split(",") if p] if args.interrupt else phases
    if not set(interrupted) <= set(phases):
        parser.error(f"--interrupt {args.interrupt}: only phases that run can be interrupted ({args.phases})")
    signals = [getattr(signal, f"SIG{name.strip().upper()}") for name in args.signals.split(",") if name.strip()]
    rng = random.Random(args.seed)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", PYTHONPATH=str(ROOT))
    env.pop("RAY_ADDRESS", None)  # a private local Ray per start, as a user runs it

    def command(parent: Path) -> list[str]:
        cmd = [sys.executable, "-m", "forge.pipeline", "--out", str(parent), "--phases", ",".join(phases)]
        for item in [*SMALL, f"data.data_dir={args.data_dir}"]:
            cmd += ["--set", item]
        return cmd

    started = time.time()
    # 1. The uninterrupted reference run.
    reference_dir = out / "reference"
    reference = Launch(command(reference_dir), env)
    code = reference.finish(args.timeout)
    if code != 0:
        print(reference.text()[-5000:], file=sys.stderr)
        raise SystemExit(f"the reference run failed with exit code {code}")
    reference_run = reference_dir / "tiny"
    reference_wall = {p: json.loads((reference_run / p / "manifest.json").read_text())["wall_time_s"] for p in phases}
    reference_s = time.time() - started
    print(f"reference run: {reference_s:.0f} s; phases {reference_wall}", flush=True)

    # 2. The interrupted run: each phase, each signal, then a final start to completion.
    killed_parent = out / "interrupted"
    run_dir = killed_parent / "tiny"
    cmd = command(killed_parent)
    rounds: list[dict] = []
    for phase in interrupted:
        for sig in signals:
            before = phase_states(run_dir)
            launch = Launch(cmd, env)
            record: dict = {"phase": phase, "signal": sig.name}
            rounds.append(record)
            # The previous round's phase, resumed, is checked when this start has passed it.
            phase_started = launch.wait_for(phase_started_line(phase), args.timeout)
            if phase_started is None:
                record.update(error=f"{phase} never started", exit_code=launch.finish(60), output=launch.text()[-3000:])
                continue
            delay = rng.uniform(0.1, 0.9) * reference_wall[phase]
            while time.time() < phase_started + delay and launch.proc.poll() is None:
                time.sleep(0.05)
            record.update(delay_s=round(delay, 2), landed_in=launch.running_phase())
            signalled = time.time()
            launch.proc.send_signal(sig)
            if sig == signal.SIGKILL:
                launch.proc.wait(30)
            record["exit_code"] = launch.finish(300)
            record["stop_s"] = round(time.time() - signalled, 2)
            record["problems"] = check_kept(run_dir, before)
            if sig == signal.SIGTERM:
                landed = record["landed_in"]
                expected = f"stopped by SIGTERM during phase '{landed}'"
                state = phase_states(run_dir).get(landed, {}).get("status")
                if record["exit_code"] != 128 + signal.SIGTERM or expected not in launch.text() \
                        or "Run the same command again to resume." not in launch.text() or state != "stopped":
                    record["problems"].append(f"SIGTERM did not stop cleanly (exit {record['exit_code']}, "
                                              f"manifest status {state})")
                    record["output"] = launch.text()[-3000:]
            print(json.dumps(record), flush=True)

    before = phase_states(run_dir)
    final = Launch(cmd, env)
    final_code = final.finish(args.timeout)
    final_problems = check_kept(run_dir, before)
    states = phase_states(run_dir)
    incomplete = [p for p in phases if states.get(p, {}).get("status") != "complete"
                  or finished_outputs(run_dir / p) is None]
    # A round survived when its interrupted phase was then completed by a later start of the same command
    # (it is, if the final start completed every phase) and nothing completed before it was redone.
    for record in rounds:
        record["survived"] = bool("landed_in" in record and not record["problems"] and final_code == 0
                                  and not incomplete and not final_problems)
    reference_digests, digests = output_digests(reference_run), output_digests(run_dir)
    per_phase: dict[str, dict] = {}
    for record in rounds:
        landed = record.get("landed_in") or "between phases"
        entry = per_phase.setdefault(landed, {"tried": 0, "survived": 0})
        entry["tried"] += 1
        entry["survived"] += int(record["survived"])
    result = {
        "command": " ".join(cmd), "harness": " ".join(sys.argv), "seed": args.seed,
        "signals": [s.name for s in signals], "phases": phases, "interrupted_phases": interrupted,
        "reference": {"wall_s": round(reference_s, 1), "phase_wall_s": reference_wall},
        "rounds": rounds,
        "final": {"exit_code": final_code, "problems": final_problems, "incomplete": incomplete,
                  "phase_wall_s": {p: json.loads((run_dir / p / "manifest.json").read_text()).get("wall_time_s")
                                   for p in phases if (run_dir / p / "manifest.json").is_file()}},
        "outputs_equal_to_reference": {p: digests.get(p) == reference_digests.get(p) for p in phases},
        "tried": len(rounds), "survived": sum(r["survived"] for r in rounds), "per_phase": per_phase,
        "harness_wall_s": round(time.time() - started, 1), "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
    }
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"survived {result['survived']} of {result['tried']} interruptions; final exit code {final_code}; "
          f"{result['harness_wall_s']:.0f} s", flush=True)
    return 0 if result["survived"] == result["tried"] and final_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
