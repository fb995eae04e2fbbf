"""Model directories and run artifacts: atomic writes, manifests with SHA-256, verification.

A model directory is what phases hand each other: a Hugging Face directory (``config.json``,
``model.safetensors``, tokenizer files) plus ``manifest.json`` listing the SHA-256 and size of every
other file. The manifest is written last, so a directory without a valid manifest is unfinished and
is never used; a file changed after the fact no longer matches its hash.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

MANIFEST = "manifest.json"
MODEL_DIR_KIND = "agent-forge/model-dir"


class ArtifactError(RuntimeError):
    """An artifact is missing, unfinished or altered."""


NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class StorageFull(OSError):
    """A write found no space left (disk full or quota); what was there before is unchanged."""


def _storage_full(err: BaseException, target: Path, size: str) -> StorageFull | None:
    if isinstance(err, OSError) and err.errno in NO_SPACE_ERRNOS:
        return StorageFull(err.errno, f"no space left to write {target} ({size}): free space on that device or "
                           f"point --out at a larger one; the previous {target.name}, if any, is unchanged")
    return None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes, *, previous: Path | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one.

    ``previous``: where the replaced file is kept (a fallback should the new one turn out unusable). A full
    disk raises ``StorageFull`` and leaves ``path`` (and ``previous``) as they were."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        full = _storage_full(err, path, f"{len(data)} bytes")
        if full is not None:
            raise full from err
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@contextlib.contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``out_dir`` in one rename.

    On failure the temporary directory is removed and ``out_dir`` is left as it was.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        yield tmp
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        full = _storage_full(err, out_dir, "a directory")
        if full is not None:
            raise full from err
        raise
    if out_dir.exists():
        # Move the old directory aside first so the new one appears in a single rename.
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


def file_hashes(directory: Path) -> dict[str, dict[str, Any]]:
    """SHA-256 and size of every file below ``directory`` except the manifest itself."""
    directory = Path(directory)
    hashes = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel == MANIFEST:
            continue
        hashes[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return hashes


def directory_digest(files: Mapping[str, Mapping[str, Any]]) -> str:
    """One hash for a whole directory, from its per-file hashes (order-independent)."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{files[name]['sha256']}\n".encode())
    return digest.hexdigest()


def write_manifest(directory: Path, *, kind: str, **fields: Any) -> dict[str, Any]:
    """Hash every file in ``directory`` and write ``manifest.json`` (last, atomically)."""
    files = file_hashes(directory)
    manifest = {
        "kind": kind,
        "created_unix": time.time(),
        "files": files,
        "digest": directory_digest(files),
        **fields,
    }
    atomic_write_json(Path(directory) / MANIFEST, manifest)
    return manifest


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity (a diverged or corrupted state)."""
    return [name for name, tensor in tensors.items()
            if torch.is_tensor(tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all()]


def model_dir_problems(directory: Path) -> list[str]:
    """Reasons why ``directory`` is not a finished, unaltered model directory (empty list: it is)."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not directory.is_dir():
        return [f"{directory} does not exist"]
    if not manifest_path.is_file():
        return [f"{manifest_path} is missing: the directory was never finished"]
    try:
        manifest = read_json(manifest_path)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return [f"{manifest_path} is not valid JSON ({err})"]
    problems = []
    listed = manifest.get("files", {})
    actual = file_hashes(directory)
    for name, meta in listed.items():
        if name not in actual:
            problems.append(f"{name} is listed in the manifest but missing")
        elif actual[name]["sha256"] != meta["sha256"]:
            problems.append(f"{name} does not match its SHA-256 in the manifest (altered or truncated)")
    problems.extend(f"{name} is not in the manifest" for name in actual if name not in listed)
    return problems


def verify_model_dir(directory: Path) -> bool:
    return not model_dir_problems(directory)


def read_manifest(directory: Path) -> dict[str, Any]:
    return read_json(Path(directory) / MANIFEST)


def state_dict_hash(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of a state dict (sorted by name)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        # reshape(-1): a 0-dim tensor cannot be viewed as bytes directly
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_model_dir(model, tokenizer, out_dir: Path, *, phase: str,
                   extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` and ``tokenizer`` as a Hugging Face directory with a manifest, atomically."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_manifest(
            tmp,
            kind=MODEL_DIR_KIND,
            phase=phase,
            model_type=getattr(model.config, "model_type", None),
            num_parameters=sum(p.numel() for p in model.parameters()),
            weights_sha256=state_dict_hash(model.state_dict()),
            **dict(extra or {}),
        )
    return out_dir


def load_model_dir(directory: Path, *, device: str | torch.device = "cpu", verify: bool = True,
                   dtype: torch.dtype | None = None):
    """Load ``(model, tokenizer)`` from a model directory, refusing unfinished or altered ones."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import forge  # noqa: F401  (registers the Cognate architecture and the ternary quantizer)

    directory = Path(directory)
    if verify:
        problems = model_dir_problems(directory)
        if problems:
            raise ArtifactError(
                f"{directory} is not a usable model directory: " + "; ".join(problems)
                + ". Re-run the phase that writes it (the pipeline redoes it automatically)."
            )
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = AutoModelForCausalLM.from_pretrained(directory, **kwargs).to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return model, tokenizer
