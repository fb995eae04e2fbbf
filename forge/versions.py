"""The versions of the packages a run depends on, printed at its start and recorded in its config.json."""
from __future__ import annotations

import platform
from importlib import metadata

# The packages whose behaviour the results depend on (the rest of the environment is in constraints.txt).
KEY_PACKAGES = ("agent-forge", "torch", "transformers", "ray", "peft", "datasets", "tokenizers", "safetensors",
                "numpy", "wandb")


def package_versions() -> dict[str, str]:
    """``{package: version}`` for Python and every key package ("not installed" where one is missing)."""
    versions = {"python": platform.python_version()}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def versions_line(versions: dict[str, str]) -> str:
    """One console line: ``python 3.11.7, torch 2.13.0, ...``."""
    return ", ".join(f"{name} {version}" for name, version in versions.items())
