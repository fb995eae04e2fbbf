"""The allowed import directions, read from every module's imports (``ast``; lazy imports inside functions count).

Layers, top to bottom; a module imports its own layer or lower ones, never a higher one:

1. measurement scripts  ``benchmarks/scripts/``: import anything; no library module imports them
2. entry points         ``forge.pipeline``, ``forge.report``, every ``__main__.py`` (the command lines)
3. phases               ``forge.phases``: orchestrators; a phase imports no other phase (only ``base``)
4. actors               ``actors``: Ray actors wrapping techniques
5. cluster              ``cluster``: Ray start/join and resource shares
6. config               ``forge.config``: the typed pipeline config (no ``cluster.runtime``, no phases)
7. benchmarks           ``benchmarks``: tasks, scorers, harness, scoreboard
8. techniques           ``forge.{pretrain,merge,quietstar,quant,curriculum,abcycles,baking}``: plain PyTorch
9. foundations          the rest of ``forge``: models, optim, data, artifacts, tracking, decoding, devices, ...

``ray`` is imported only by layers 1-5. ``import forge`` (the package itself) registers the Auto classes and
may be imported from anywhere; ``forge/__init__.py`` is not checked.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("forge", "actors", "cluster", "benchmarks")
LAYERS = ("scripts", "entry", "phases", "actors", "cluster", "config", "benchmarks", "techniques", "foundations")
TECHNIQUES = ("pretrain", "merge", "quietstar", "quant", "curriculum", "abcycles", "baking")
RAY_LAYERS = ("scripts", "entry", "phases", "actors", "cluster")
# Known exceptions, with their reason: Phase 4's job config checks its guard task names against the benchmark
# registry when it loads (the guard itself is passed in: benchmarks.guard.job_guard).
EXCEPTIONS = {("forge.quant.run", "benchmarks.tasks")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            found[module_name(path)] = path
    return found


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[:2] == ["benchmarks", "scripts"]:
        return "scripts"
    if parts[-1] == "__main__" or module in ("forge.pipeline", "forge.report"):
        return "entry"
    if parts[0] in ("actors", "cluster", "benchmarks"):
        return parts[0]
    if module.startswith("forge.phases"):
        return "phases"
    if module == "forge.config":
        return "config"
    if len(parts) > 1 and parts[1] in TECHNIQUES:
        return "techniques"
    return "foundations"


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every project module ``path`` imports (``from a.b import c`` names a.b.c when c is a module, else a.b)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                     for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] in PACKAGES + ("ray",))
    return found


def test_every_module_is_read():
    found = modules()
    assert "forge.pipeline" in found and "forge.pretrain.trainer" in found and "benchmarks.scripts.default_run" in found
    assert {layer(m) for m in found} == set(LAYERS)


def test_imports_point_down_the_layers():
    known = modules()
    wrong = []
    for module, path in sorted(known.items()):
        if module == "forge":
            continue
        for target in sorted(imports(path, known)):
            if target == "ray" or target.startswith("ray."):
                if layer(module) not in RAY_LAYERS:
                    wrong.append(f"{module} imports ray (only {', '.join(RAY_LAYERS)} may)")
                continue
            if target == "forge" or (module, target) in EXCEPTIONS:
                continue
            if target not in known:
                wrong.append(f"{module} imports {target}, which is not a module of the project")
                continue
            if LAYERS.index(layer(target)) < LAYERS.index(layer(module)):
                wrong.append(f"{module} ({layer(module)}) imports {target} ({layer(target)}), a higher layer")
            if layer(target) == "scripts" and target != module:
                wrong.append(f"{module} imports the measurement script {target}; nothing imports a script")
            if module.startswith("forge.phases.") and target.startswith("forge.phases.") and target != "forge.phases.base":
                wrong.append(f"{module} imports the phase module {target}; phases share code through a lower layer")
    assert not wrong, "\n".join(wrong)


def test_the_layers_catch_a_wrong_import(tmp_path):
    """The check can fail: a technique importing the config, and a phase importing another phase."""
    assert layer("forge.pretrain.trainer") == "techniques" and layer("forge.config") == "config"
    assert LAYERS.index("config") < LAYERS.index("techniques")
    assert layer("forge.phases.bitnet") == layer("forge.phases.cognate") == "phases"
    source = tmp_path / "m.py"
    source.write_text("from forge.config import PipelineConfig\nimport ray\n\ndef f():\n    from forge.phases import cognate\n")
    assert imports(source, {"forge.config": source, "forge.phases.cognate": source}) == {
        "forge.config", "ray", "forge.phases.cognate"}
