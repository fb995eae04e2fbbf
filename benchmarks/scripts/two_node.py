"""Two Ray nodes on one machine: the shrunken pipeline, submitted with ``ray job submit``, runs actors on both
nodes, and still completes when the worker node is lost in the middle of Phase 1. JSON out.

Usage:
    python benchmarks/scripts/two_node.py --out /tmp/two-node --json two_node.json [--kill-at-step 3]

Starts a Ray head (``ray start --head``: its own ports and temp dir, 1 CPU, authentication off) and a second
raylet as the worker node (``ray start --address``: 1 CPU, its own ports), then twice submits Phase 1 of the
shrunken pipeline of tests/test_pipeline.py (``SMALL``, the reference data folder) with ``ray job submit``
into a fresh run directory on the shared disk:

1. undisturbed: the job must succeed, and the actor processes recorded in the run's ``actor_attempts.jsonl``
   files must have run on both nodes;
2. with the worker node lost: once a Cognate trainer on the worker node has logged ``--kill-at-step``, the
   node's raylet and every process under it get SIGKILL (a machine that vanishes); Ray restarts the trainer on
   the head node from its step checkpoint, and the job must still succeed.

Only this script's Ray processes are stopped at the end (found by its temp dir in their command lines), never
with ``ray stop``, which would stop every Ray of the user on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from actors.restarts import ATTEMPTS_FILE, read_attempts  # noqa: E402
from forge.tracking import read_metrics  # noqa: E402
from test_faults import COGNATE_ONLY  # noqa: E402  (Phase 1 alone, 6 steps per epoch, as the fault tests run it)
from test_pipeline import SMALL  # noqa: E402  (the shrunken config the pipeline tests use)

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TwoNodeCluster:
    """A head and a worker raylet of one Ray cluster on this machine, started with the ``ray`` CLI."""

    def __init__(self, temp_dir: Path, env: dict[str, str]):
        self.temp_dir, self.env = temp_dir, env
        self.port, self.dashboard_port, self.worker_manager_port = free_port(), free_port(), free_port()
        self._ray("start", "--head", "--port", str(self.port), "--dashboard-port", str(self.dashboard_port),
                  "--dashboard-agent-listen-port", str(free_port()), "--num-cpus", "1", "--temp-dir", str(temp_dir),
                  "--disable-usage-stats")
        self._ray("start", "--address", f"127.0.0.1:{self.port}", "--num-cpus", "1",
                  "--node-manager-port", str(self.worker_manager_port), "--dashboard-agent-listen-port",
                  str(free_port()), "--metrics-export-port", str(free_port()), "--disable-usage-stats")
        self.head_node_id, self.worker_node_id = self._node_ids()

    @property
    def job_address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _ray(self, *args: str, timeout: float = 180) -> str:
        done = subprocess.run([RAY, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise SystemExit(f"ray {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        return done.stdout

    def _node_ids(self) -> tuple[str, str]:
        from ray.util.state import list_nodes

        deadline = time.time() + 120
        while time.time() < deadline:
            nodes = [n for n in list_nodes(address=self.job_address) if n.state == "ALIVE"]
            if len(nodes) == 2:
                head = next(n.node_id for n in nodes if n.is_head_node)
                return head, next(n.node_id for n in nodes if not n.is_head_node)
            time.sleep(1)
        raise SystemExit("the worker node did not join the head within 120 s")

    def worker_processes(self) -> list[psutil.Process]:
        """The worker node's raylet and every process under it (its Ray workers and agents)."""
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if "raylet" in cmdline and f"--node_manager_port={self.worker_manager_port}" in cmdline:
                return [proc, *proc.children(recursive=True)]
        return []

    def lose_worker_node(self) -> int:
        """SIGKILL the worker node's processes, as when its machine vanishes; returns how many were killed."""
        processes = self.worker_processes()
        for proc in processes:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                continue
        return len(processes)

    def submit(self, run_parent: Path, data_dir: str) -> subprocess.Popen:
        cmd = [RAY, "job", "submit", "--address", self.job_address, "--runtime-env-json",
               json.dumps({"env_vars": {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
                                        "FORGE_DATA_DIR": data_dir}}),
               "--", sys.executable, "-m", "forge.pipeline", "--out", str(run_parent)]
        for item in [*SMALL, *COGNATE_ONLY, f"data.data_dir={data_dir}"]:
            cmd += ["--set", item]
        return subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self) -> None:
        """SIGKILL every process of this cluster: those whose command line names its temp dir, and the worker's."""
        mine = [*self.worker_processes()]
        for proc in psutil.process_iter(["cmdline"]):
            if str(self.temp_dir) in " ".join(proc.info["cmdline"] or []):
                mine.append(proc)
        for proc in mine:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                continue


def actor_nodes(run_dir: Path) -> dict[str, list[str]]:
    """``{trainer: [node id of each of its processes]}`` from the run's attempts files."""
    return {path.parent.name: [a["node_id"] for a in read_attempts(path)]
            for path in sorted(run_dir.glob(f"**/{ATTEMPTS_FILE}"))}


def trainer_on(run_dir: Path, node_id: str, step: int) -> str | None:
    """A trainer whose current process runs on ``node_id`` and that has logged ``step``, if there is one."""
    phase_dir = run_dir / "cognate"
    metrics = read_metrics(phase_dir / "metrics.jsonl") if (phase_dir / "metrics.jsonl").is_file() else []
    for name, nodes in actor_nodes(run_dir).items():
        reached = max((m.get("step", -1) for m in metrics if m["source"] == f"cognate-{name}"), default=-1)
        if nodes and nodes[-1] == node_id and reached >= step:
            return name
    return None


def run_job(cluster: TwoNodeCluster, run_parent: Path, data_dir: str, timeout: float,
            kill_at_step: int | None) -> dict:
    started = time.time()
    job = cluster.submit(run_parent, data_dir)
    record: dict = {"run_dir": str(run_parent / "tiny")}
    while job.poll() is None and time.time() < started + timeout:
        if kill_at_step is not None and "lost_node_at_s" not in record:
            victim = trainer_on(run_parent / "tiny", cluster.worker_node_id, kill_at_step)
            if victim is not None:
                record.update(lost_node_at_s=round(time.time() - started, 1), trainer_on_lost_node=victim,
                              processes_killed=cluster.lose_worker_node())
                print(f"worker node lost: {record}", flush=True)
        time.sleep(0.2)
    if job.poll() is None:
        job.kill()
    output = job.stdout.read() if job.stdout else ""
    manifest_path = run_parent / "tiny" / "cognate" / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    nodes = actor_nodes(run_parent / "tiny")
    names = {cluster.head_node_id: "head", cluster.worker_node_id: "worker"}
    record.update(
        exit_code=job.returncode, wall_s=round(time.time() - started, 1), phase_status=manifest.get("status"),
        job_succeeded="succeeded" in output.lower() and job.returncode == 0,
        actor_nodes={name: [names.get(n, n) for n in ids] for name, ids in nodes.items()},
        nodes_used=sorted({names.get(n, n) for ids in nodes.values() for n in ids}),
        steps={name: figures.get("steps") for name, figures in manifest.get("summary", {}).get("models", {}).items()},
    )
    if not record["job_succeeded"]:
        record["output_tail"] = output[-4000:]
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for the cluster's temp dir and the two runs (emptied)")
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--kill-at-step", type=int, default=3, help="lose the worker node once its trainer logs this")
    parser.add_argument("--data-dir", default=os.environ.get("FORGE_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--timeout", type=float, default=1500, help="seconds each job may take")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    started = time.time()
    cluster = TwoNodeCluster(Path(f"/tmp/forge-2node-{os.getpid()}"), env)
    try:
        undisturbed = run_job(cluster, out / "undisturbed", args.data_dir, args.timeout, None)
        print(f"undisturbed: {undisturbed}", flush=True)
        lost = run_job(cluster, out / "node_lost", args.data_dir, args.timeout, args.kill_at_step)
        print(f"node lost: {lost}", flush=True)
    finally:
        cluster.stop()
    result = {
        "harness": " ".join(sys.argv), "cpus": os.cpu_count(), "nodes": {"head": 1, "worker": 1},
        "undisturbed": undisturbed, "node_lost": lost, "harness_wall_s": round(time.time() - started, 1),
        "load_average_at_end": os.getloadavg(),
        "passed": bool(undisturbed["job_succeeded"] and undisturbed["nodes_used"] == ["head", "worker"]
                       and lost["job_succeeded"] and lost.get("trainer_on_lost_node") is not None
                       and lost["phase_status"] == "complete"),
    }
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("passed", "harness_wall_s")}), flush=True)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
