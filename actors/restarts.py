"""Actors that come back after their process dies, and a clear failure when one keeps dying.

Ray restarts an actor created with ``restart_options(n)`` up to ``n`` times (its constructor runs again)
and re-sends the method call that was running, so the work resumes from the actor's own last checkpoint.
Each actor process appends one line to an attempts file when it starts (pid, node, its Ray log file):
``lost_error`` turns the final ``RayActorError`` into a message that names the actor, the attempts and the
log, and tests find the process to kill there.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

ATTEMPTS_FILE = "actor_attempts.jsonl"


class ActorLost(RuntimeError):
    """An actor died more often than ``ray.max_restarts`` allows; its phase fails."""


def restart_options(max_restarts: int) -> dict[str, int]:
    """Ray options for an actor restarted up to ``max_restarts`` times, its running call re-sent until the
    actor is back or dead for good.

    The retries are unbounded because ``max_restarts`` already bounds them: Ray spends a retry each time a call
    finds the actor restarting, and an actor whose node was lost can wait minutes for a free CPU elsewhere (a
    bounded count was used up in seconds in the two-node test, failing a phase whose actor came back)."""
    if max_restarts < 0:
        raise ValueError(f"ray.max_restarts must be >= 0, got {max_restarts}")
    return {"max_restarts": max_restarts, "max_task_retries": -1 if max_restarts else 0}


def _log_file(fd: int) -> str | None:
    # Ray points a worker's stdout/stderr at its log files (worker-<id>-<job>-<pid>.out/.err).
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # not Linux, or no /proc
        return None
    return target if target.startswith("/") else None


def record_attempt(path: str | os.PathLike) -> dict[str, Any]:
    """Append this actor process to ``path`` (one JSON line); call it first thing in the constructor."""
    import ray

    context = ray.get_runtime_context()
    actor_id = context.get_actor_id()
    record = {"actor_id": actor_id, "pid": os.getpid(), "node_id": context.get_node_id(),
              "restarted": bool(read_attempts(path, actor_id)), "started_unix": time.time(),
              "log": _log_file(1), "log_err": _log_file(2)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:  # one short line per write: appends stay whole
        handle.write(json.dumps(record) + "\n")
    return record


def read_attempts(path: str | os.PathLike, actor_id: str | None = None) -> list[dict[str, Any]]:
    """The processes recorded in ``path`` (of one actor, if ``actor_id`` is given); a torn last line is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in records if actor_id is None or r["actor_id"] == actor_id]


def lost_error(what: str, attempts_path: str | os.PathLike, max_restarts: int, error: BaseException) -> ActorLost:
    """The error for an actor (``what``: e.g. "cognate trainer 'a'") whose ``RayActorError`` came after its last
    restart; its processes are read from ``attempts_path`` (filtered by the error's actor id)."""
    attempts = read_attempts(attempts_path, getattr(error, "actor_id", None))
    started = len(attempts) or max_restarts + 1
    pids = ", ".join(str(a["pid"]) for a in attempts) or "unknown"
    last = attempts[-1] if attempts else {}
    log = last.get("log") or f"the worker logs of the Ray session (pid {last.get('pid', 'unknown')})"
    cause = (str(error).strip() or type(error).__name__).splitlines()[0]
    return ActorLost(
        f"{what} died {started} time(s) and ray.max_restarts={max_restarts} allows no more (processes: {pids}); "
        f"last log: {log} (and its .err); attempts recorded in {attempts_path}; Ray said: {cause}. Its checkpoints "
        "are kept: run the same command again to resume, or raise --set ray.max_restarts=N")
