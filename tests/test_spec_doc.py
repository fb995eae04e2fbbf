"""docs/SPEC.md cites only files and tests that exist."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "docs" / "SPEC.md"
TEST_REF = re.compile(r"\b(tests/[\w/]+\.py)::(\w+)")
PATH_REF = re.compile(r"`((?:forge|actors|cluster|benchmarks|tests|configs|docs)/[\w./]+"
                      r"|ray_cluster\.yaml|pyproject\.toml)`")


def defined_tests(path: Path) -> set[str]:
    return {node.name for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_cited_file_and_test_exists():
    text = SPEC.read_text(encoding="utf-8")
    tests = TEST_REF.findall(text)
    paths = PATH_REF.findall(text)
    assert len(tests) > 50 and len(paths) > 50  # the patterns still match how the file cites
    missing_files = sorted({p for p in paths + [f for f, _ in tests] if not (ROOT / p).exists()})
    assert not missing_files, f"docs/SPEC.md cites files that do not exist: {missing_files}"
    missing_tests = sorted({f"{f}::{name}" for f, name in tests if name not in defined_tests(ROOT / f)})
    assert not missing_tests, f"docs/SPEC.md cites tests that do not exist: {missing_tests}"

