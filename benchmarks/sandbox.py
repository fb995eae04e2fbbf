"""Run untrusted generated code in a separate, limited process.

Each program runs in a fresh interpreter (``python -I -S``: no site-packages, no project on the path)
in a throwaway working directory, under:

- resource limits: CPU seconds, address space (memory), file size, open files, processes;
- a wall-clock timeout, after which the whole process group is killed;
- no network: a new network namespace (``unshare --net``) where the system allows it, and in every
  case an audit hook (PEP 578) that refuses sockets;
- an audit hook that refuses creating processes (fork, exec, spawn, subprocess, os.system), ctypes,
  writing, deleting or renaming outside the working directory, and reading files other than the
  standard library's and the working directory's.

Output goes to files capped by the file-size limit, so a flood of output cannot exhaust the
evaluator's memory. This contains accidents and the usual hostile samples of code benchmarks; it is
not a boundary against a determined attacker (use a container or VM for that).
"""
from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

Status = Literal["passed", "failed", "timeout"]

# Runs inside the sandboxed interpreter: read the program, install the guard, execute the program.
_RUNNER = r'''
import os, resource, sys
_WORKDIR = os.path.realpath(os.getcwd())
_READABLE = tuple(sys.argv[1].split(os.pathsep)) + (_WORKDIR,)
with open("program.py", encoding="utf-8") as _handle:
    _SOURCE = _handle.read()
for _name, _value in zip(("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_CORE"),
                         sys.argv[2:]):
    resource.setrlimit(getattr(resource, _name), (int(_value), int(_value)))

def _make_guard(workdir, readable):
    realpath, fspath, write = os.path.realpath, os.fspath, os.write
    blocked = frozenset({
        "os.system", "os.fork", "os.forkpty", "os.exec", "os.spawn", "os.posix_spawn", "subprocess.Popen",
        "os.kill", "os.killpg", "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
        "socket.gethostbyname", "ctypes.dlopen", "ctypes.dlsym", "gc.get_objects", "gc.get_referrers",
        "gc.get_referents", "sys._current_frames", "os.setuid", "os.setgid", "os.chroot", "os.putenv",
        "os.unsetenv", "sys.setprofile", "sys.settrace", "resource.setrlimit", "resource.prlimit",
    })
    blocked_modules = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "_multiprocessing"})
    path_events = frozenset({
        "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link", "os.symlink",
        "os.truncate", "os.utime", "os.chdir", "shutil.rmtree", "shutil.copyfile",
        "shutil.copymode", "shutil.copystat", "shutil.copytree", "shutil.move", "shutil.chown",
    })
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def inside(path, roots):
        if isinstance(path, int):
            return True
        real = realpath(fspath(path))
        if isinstance(real, bytes):
            real = real.decode("utf-8", "surrogateescape")
        return any(real == root or real.startswith(root.rstrip("/") + "/") for root in roots)

    def refuse(event, detail):
        write(2, f"sandbox refused: {event} {detail}\n".encode("utf-8", "replace"))
        raise PermissionError(f"sandbox refused {event} {detail}")

    def guard(event, args):
        if event in blocked:
            refuse(event, "")
        if event == "import" and args[0].split(".")[0] in blocked_modules:
            refuse(event, args[0])
        if event == "open":
            path, mode, flags = args
            if path is None:
                return
            writing = bool(mode and any(c in mode for c in "wax+")) or bool((flags or 0) & write_flags)
            if not inside(path, (workdir,) if writing else readable):
                refuse(event, repr(path))
        elif event in ("os.listdir", "os.scandir"):
            # The import system lists the standard library's folders.
            if args[0] is not None and not inside(args[0], readable):
                refuse(event, repr(args[0]))
        elif event in path_events:
            for arg in args:
                if isinstance(arg, (str, bytes, os.PathLike)) and not inside(arg, (workdir,)):
                    refuse(event, repr(arg))
    return guard

sys.addaudithook(_make_guard(_WORKDIR, _READABLE))
del _make_guard
exec(compile(_SOURCE, "program.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
'''


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run."""

    timeout_s: float = 10.0  # wall clock; the process group is killed after it
    memory_mb: int = 512  # address space (RLIMIT_AS)
    max_output_mb: int = 4  # any file written, stdout and stderr included (RLIMIT_FSIZE)
    max_open_files: int = 64  # RLIMIT_NOFILE
    max_processes: int = 1  # RLIMIT_NPROC: the user's processes system-wide (so 1: none more); not for root


@dataclass(frozen=True)
class ExecutionResult:
    """Outcome of one program."""

    status: Status  # passed: exit code 0; failed: any error, refusal or limit; timeout: killed
    exit_code: int | None  # None when killed by the timeout
    stderr_tail: str  # last part of the program's stderr (the error, or "sandbox refused: ...")
    wall_s: float  # seconds from start to finish

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.lru_cache(maxsize=1)
def _interpreter() -> str:
    """The base interpreter (outside any virtualenv, so the project's packages are not importable)."""
    return getattr(sys, "_base_executable", None) or sys.executable


@functools.lru_cache(maxsize=1)
def network_namespace_prefix() -> tuple[str, ...]:
    """``unshare`` arguments that give the program an empty network namespace, or () if unavailable."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    prefix = (unshare, "--net") if os.geteuid() == 0 else (unshare, "--user", "--map-root-user", "--net")
    probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
    return prefix if probe.returncode == 0 else ()


@functools.lru_cache(maxsize=1)
def _readable_roots() -> str:
    paths = sysconfig.get_paths()
    roots = {os.path.realpath(paths[name]) for name in ("stdlib", "platstdlib")}
    roots |= {"/dev/null", "/dev/urandom", "/usr/share/zoneinfo", "/etc/localtime"}
    return os.pathsep.join(sorted(roots))


def _limit_args(limits: SandboxLimits) -> list[str]:
    """Values for the runner's setrlimit calls, in its order (CPU, AS, FSIZE, NOFILE, NPROC, CORE)."""
    # The runner sets them itself before the program runs (a preexec_fn is unsafe with threads).
    return [str(value) for value in (int(limits.timeout_s) + 1, limits.memory_mb * 1024 * 1024,
                                     limits.max_output_mb * 1024 * 1024, limits.max_open_files,
                                     limits.max_processes, 0)]


def _tail(path: Path, size: int = 2000) -> str:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - size))
        return handle.read().decode("utf-8", "replace")


def run_program(program: str, limits: SandboxLimits = SandboxLimits()) -> ExecutionResult:
    """Run ``program`` (Python source) in the sandbox; it passes when it exits with code 0."""
    workdir = Path(tempfile.mkdtemp(prefix="forge-sandbox-"))
    start = time.perf_counter()
    try:
        (workdir / "program.py").write_text(program, encoding="utf-8")
        command = [*network_namespace_prefix(), _interpreter(), "-I", "-S", "-c", _RUNNER, _readable_roots(),
                   *_limit_args(limits)]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(workdir), "TMPDIR": str(workdir)}
        with open(workdir / "stdout.txt", "wb") as stdout, open(workdir / "stderr.txt", "wb") as stderr:
            process = subprocess.Popen(command, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=stdout,
                                       stderr=stderr, start_new_session=True)
            try:
                exit_code: int | None = process.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                exit_code = None
            finally:
                # The program's session: anything it left behind goes too.
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait()
        status: Status = "timeout" if exit_code is None else ("passed" if exit_code == 0 else "failed")
        return ExecutionResult(status=status, exit_code=exit_code, stderr_tail=_tail(workdir / "stderr.txt"),
                               wall_s=time.perf_counter() - start)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_programs(programs: Sequence[str], limits: SandboxLimits = SandboxLimits(),
                 workers: int | None = None) -> list[ExecutionResult]:
    """Run many programs, ``workers`` at a time (default: 2 per CPU core), in input order."""
    workers = workers or max(1, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda source: run_program(source, limits), programs))
