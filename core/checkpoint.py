"""Verified, atomically committed checkpoints for exact resume.

A checkpoint folder holds safetensors (trainable weights, optimizer tensors, RNG states) and JSON (optimizer
and scheduler settings, trainer position, identity of the run). It is written under a temporary name, every
file flushed, ``manifest.json`` written last with the size and sha256 of every file, then renamed into
place. Only safetensors and JSON are ever read back: no pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

from ift.errors import RunError

MANIFEST = "manifest.json"
FORMAT = 1


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_write(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(
    root: Path,
    step: int,
    *,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    position: dict[str, Any],
    identity: dict[str, Any],
    before_commit: Any = None,
) -> Path:
    """Write checkpoint ``root/step-<n>`` atomically; returns its path."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    final = root / step_name(step)
    tmp = root / f".{step_name(step)}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(weights, str(tmp / "weights.safetensors"))
    state = optimizer.state_dict()
    tensors: dict[str, Any] = {}
    scalars: dict[str, Any] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = rng
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    np_state = np.random.get_state()  # legacy form: ("MT19937", keys, pos, has_gauss, cached_gaussian)
    if not isinstance(np_state, tuple):
        raise TypeError(f"numpy's global random state is not MT19937: {type(np_state).__name__}")
    trainer_state = {
        "format": FORMAT,
        "step": step,
        "position": position,
        "identity": identity,
        "optimizer": {"param_groups": state["param_groups"], "scalars": scalars},
        "scheduler": scheduler.state_dict(),
        "rng": {"python": _jsonable(random.getstate()), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]},
    }
    _fsync_write(tmp / "trainer_state.json", json.dumps(trainer_state))
    if before_commit is not None:
        before_commit(tmp)
    return commit_folder(tmp, final, {"format": FORMAT, "step": step})


def commit_folder(tmp: Path, final: Path, info: dict[str, Any]) -> Path:
    """Make every file written in ``tmp`` durable, write ``manifest.json`` last (``info`` plus the size and
    sha256 of each file, which :func:`verify` checks), then rename ``tmp`` to ``final``, replacing an older
    copy: a folder under its final name is always complete. Returns ``final``."""
    files = {}
    for file in sorted(tmp.iterdir()):
        _fsync_file(file)
        files[file.name] = {"bytes": file.stat().st_size, "sha256": _sha256(file)}
    _fsync_write(tmp / MANIFEST, json.dumps({**info, "files": files}, indent=2))
    if final.exists():  # e.g. a resumed run reaching the same step again
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def verify(path: Path) -> str | None:
    """None when every file matches the manifest, else what is wrong (naming the file)."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return f"{manifest_path} is missing (the checkpoint was not finished)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        return f"{manifest_path} is unreadable: {exc}"
    for name, expected in manifest.get("files", {}).items():
        file = path / name
        if not file.is_file():
            return f"{file} is missing"
        if file.stat().st_size != expected["bytes"] or _sha256(file) != expected["sha256"]:
            return f"{file} does not match its size/sha256 in {manifest_path}"
    return None


def latest_good(root: Path) -> Path | None:
    """The newest checkpoint that verifies. Broken or partial ones are moved aside (never deleted) with a
    warning."""
    if not root.is_dir():
        return None
    for leftover in root.glob(".step-*.tmp-*"):
        _move_aside(leftover, "an unfinished checkpoint write")
    for candidate in sorted(root.glob("step-*"), reverse=True):
        problem = verify(candidate)
        if problem is None:
            return candidate
        _move_aside(candidate, problem)
    return None


def _move_aside(path: Path, why: str) -> None:
    target = path.with_name(f"broken-{path.name.lstrip('.')}")
    n = 1
    while target.exists():
        target = path.with_name(f"broken-{path.name.lstrip('.')}.{n}")
        n += 1
    os.replace(path, target)
    warnings.warn(f"checkpoint {path.name} set aside as {target.name}: {why}", stacklevel=3)


def rotate(root: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` committed checkpoints (called after a commit)."""
    committed = sorted(p for p in root.glob("step-*") if (p / MANIFEST).is_file())
    for old in committed[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old)


def load_checkpoint(path: Path, *, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG states; returns the trainer state (position...)."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    problem = verify(path)
    if problem is not None:
        raise RunError(f"cannot resume from {path}: {problem}")
    state = json.loads((path / "trainer_state.json").read_text())
    weights = load_file(str(path / "weights.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing or set(weights) - set(params):
        raise RunError(
            f"cannot resume from {path}: its weights do not match the model "
            f"(missing {missing[:3]}, unexpected {sorted(set(weights) - set(params))[:3]})"
        )
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    tensors = load_file(str(path / "optimizer.safetensors"))
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if not key.startswith("rng."):
            index, name = key.split(".", 1)
            opt_state.setdefault(int(index), {})[name] = value
    for key, value in state["optimizer"]["scalars"].items():
        index, name = key.split(".", 1)
        opt_state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["optimizer"]["param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    random.setstate(_tuples(state["rng"]["python"]))
    kind, keys, pos, has_gauss, cached = state["rng"]["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    return state
