"""Write constraints.txt from the environment of this Python: every installed package at its exact version.

Run by .ci/refresh-constraints after the test suite passed in that environment; not edited by hand.
``--compare constraints.txt`` prints what this environment has that differs from the file (.ci/run --latest).
Local version labels (torch's ``+cpu``) are dropped, so the same file serves CPU and CUDA builds of a release.
"""
from __future__ import annotations

import sys
from datetime import date
from importlib import metadata
from pathlib import Path

OWN = {"agent-forge", "pip"}  # the project comes from the checkout, pip from the virtualenv: never pinned


def installed() -> dict[str, tuple[str, str]]:
    """``{lower-case name: (name, version without local label)}`` of this environment, the project left out."""
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in OWN:
            found[name.lower()] = (name, dist.version.split("+")[0])
    return found


def compare(path: str) -> None:
    """Print every package whose installed version differs from ``path``'s pin: ``name: tested -> installed``."""
    pinned = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pinned[name.lower()] = version
    current = installed()
    for key in sorted(set(pinned) | set(current)):
        tested, now = pinned.get(key, "absent"), current[key][1] if key in current else "absent"
        if tested != now:
            print(f"  {current[key][0] if key in current else key}: {tested} -> {now}")


def main(path: str, tested_with: str) -> None:
    pins = {key: f"{name}=={version}" for key, (name, version) in installed().items()}
    header = [f"# The package set the test suite passed with ({tested_with}),",
              f"# written by .ci/freeze_constraints.py on {date.today().isoformat()} with Python "
              f"{sys.version.split()[0]}. Refresh it on purpose,",
              "# not by hand: bash .ci/refresh-constraints installs the newest releases, runs the tests and "
              "writes this file only if they pass."]
    Path(path).write_text("\n".join(header + [pins[key] for key in sorted(pins)]) + "\n", encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        compare(sys.argv[2])
    else:
        main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "tests")
