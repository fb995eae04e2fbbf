"""The code sandbox: HumanEval's canonical solutions pass, wrong and hostile programs are contained."""
import os
import uuid
from pathlib import Path

import pytest

from benchmarks.sandbox import SandboxLimits, run_program, run_programs
from benchmarks.tasks import get_task, load_docs

# Small limits keep the hostile samples fast.
LIMITS = SandboxLimits(timeout_s=3.0, memory_mb=256)


def test_all_humaneval_canonical_solutions_pass_and_a_wrong_one_fails(shared_data):
    humaneval = get_task("humaneval")
    docs = load_docs(humaneval, shared_data)
    assert len(docs) == 164
    programs = [humaneval.program(doc, doc["canonical_solution"]) for doc in docs]
    # A wrong answer to the first problem (has_close_elements), run alongside the others.
    programs.append(humaneval.program(docs[0], "    return False\n"))
    outcomes = run_programs(programs, SandboxLimits(timeout_s=20.0))
    failed = [doc["task_id"] for doc, outcome in zip(docs, outcomes) if not outcome.passed]
    assert failed == []
    assert outcomes[-1].status == "failed" and "AssertionError" in outcomes[-1].stderr_tail


def test_mbpp_reference_code_passes(shared_data):
    mbpp = get_task("mbpp")
    docs = [doc for doc in load_docs(mbpp, shared_data) if doc["task_id"] in (11, 12, 367)]
    outcomes = run_programs([mbpp.program(doc, doc["code"]) for doc in docs], LIMITS)
    assert [outcome.status for outcome in outcomes] == ["passed"] * 3


HOSTILE = {
    "infinite loop": ("while True:\n    pass\n", "timeout", ""),
    "fork bomb": ("import os\nwhile True:\n    os.fork()\n", "failed", "sandbox refused: os.fork"),
    "subprocess": ("import subprocess\nsubprocess.run(['sh', '-c', 'echo hi'])\n", "failed", "sandbox refused"),
    "memory bomb": ("blocks = []\nwhile True:\n    blocks.append(bytearray(64 * 1024 * 1024))\n", "failed",
                    "MemoryError"),
    "network call": ("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)\n", "failed",
                     "sandbox refused"),
    "raw socket": ("import _socket\n_socket.socket().connect(('1.1.1.1', 80))\n", "failed", "sandbox refused"),
    "read project": (f"print(open({str(Path(__file__).resolve())!r}).read())\n", "failed", "sandbox refused: open"),
    "ctypes": ("import ctypes\nctypes.CDLL(None).fork()\n", "failed", "sandbox refused: import ctypes"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_programs_are_stopped_or_refused(name):
    program, status, message = HOSTILE[name]
    outcome = run_program(program, LIMITS)
    assert outcome.status == status
    assert message in outcome.stderr_tail
    assert outcome.wall_s < LIMITS.timeout_s + 2.0


def test_writes_outside_the_working_directory_are_refused_and_inside_allowed(tmp_path):
    target = tmp_path / f"escape-{uuid.uuid4().hex}.txt"
    outcome = run_program(f"open({str(target)!r}, 'w').write('x')\n", LIMITS)
    assert outcome.status == "failed" and "sandbox refused: open" in outcome.stderr_tail
    assert not target.exists()
    outcome = run_program("import os\nos.remove('/etc/hostname')\n", LIMITS)
    assert "sandbox refused: os.remove" in outcome.stderr_tail and os.path.exists("/etc/hostname")
    inside = run_program("open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'\n",
                         LIMITS)
    assert inside.passed


def test_evaluator_keeps_going_after_hostile_programs():
    programs = [HOSTILE["infinite loop"][0], HOSTILE["fork bomb"][0], HOSTILE["memory bomb"][0],
                "assert sum(range(5)) == 10\n"]
    outcomes = run_programs(programs, LIMITS, workers=4)
    assert [outcome.status for outcome in outcomes] == ["timeout", "failed", "failed", "passed"]
