"""Resuming a run: which checkpoint, whether the run is still the same run, and trimming the event log.

A resume must continue the *same* run. The identity recorded in every checkpoint covers the resolved
recipe (except fields that are safe to change), the data fingerprints, the tokenizer, the template and the
world size; any difference is an error that lists what changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ift.checkpoint import latest_good, verify
from ift.errors import Problem, RecipeError, RunError

# Changing these does not change what the model sees or how it is updated up to the checkpoint.
SAFE_TO_CHANGE = (
    "run.output_dir",
    "overrides",
    "trainer.log_every",
    "trainer.max_steps",
    "trainer.epochs",
    "trainer.save_every",
    "trainer.keep_last",
    "trainer.eval_every",
    "trainer.skip_nonfinite_steps",
    "trainer.early_stopping_patience",
    "trainer.early_stopping_min_delta",
    # evaluation settings that do not touch the split (eval.fraction / max_examples change the
    # training data, so they are part of the run's identity)
    "eval.metrics",
    "eval.baseline",
    "eval.max_new_tokens",
    "eval.batch_size",
    "eval.samples",
)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, item in enumerate(value):
            out.update(flatten(item, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def run_identity(
    resolved: dict[str, Any],
    *,
    data: list[dict[str, Any]],
    tokenizer: str,
    template: str,
    world_size: int,
    plugins: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``plugins``: the provenance (distribution, version) of each plugin whose code prepares the data or trains."""
    recipe = {k: v for k, v in flatten(resolved).items() if not k.startswith(SAFE_TO_CHANGE)}
    return {
        "recipe": recipe,
        "data": {d["name"]: d["fingerprint"] for d in data},
        "tokenizer": hashlib.sha256(tokenizer.encode()).hexdigest()[:16],
        "template": template,
        "world_size": world_size,
        "plugins": dict(plugins or {}),
    }


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    changes = []
    for key in sorted(set(old["recipe"]) | set(new["recipe"])):
        if old["recipe"].get(key) != new["recipe"].get(key):
            changes.append(f"recipe key {key}: {old['recipe'].get(key)!r} -> {new['recipe'].get(key)!r}")
    for name in sorted(set(old["data"]) | set(new["data"])):
        if old["data"].get(name) != new["data"].get(name):
            changes.append(f"data {name!r} changed (fingerprint {old['data'].get(name)} -> {new['data'].get(name)})")
    for key, label in (("tokenizer", "tokenizer"), ("template", "template"), ("world_size", "world size")):
        if old[key] != new[key]:
            changes.append(f"{label}: {old[key]} -> {new[key]}")
    if "plugins" in old:  # checkpoints written before plugin versions were recorded are not compared on them
        for name in sorted(set(old["plugins"]) | set(new.get("plugins", {}))):
            before, after = old["plugins"].get(name, "not used"), new.get("plugins", {}).get(name, "not used")
            if before != after:
                changes.append(f"plugin {name!r}: {before} -> {after}")
    return changes


def choose_checkpoint(run_dir: Path, resume: str) -> Path | None:
    """``auto``: the newest checkpoint that verifies (or None); a path: that checkpoint, verified."""
    if resume == "auto":
        return latest_good(run_dir / "checkpoints")
    path = Path(resume)
    if not path.is_dir():
        raise RunError(f"--resume {resume}: no such checkpoint folder")
    problem = verify(path)
    if problem is not None:
        raise RunError(f"--resume {resume}: checkpoint does not verify: {problem}")
    return path


def check_same_run(checkpoint: Path, identity: dict[str, Any]) -> None:
    stored = json.loads((checkpoint / "trainer_state.json").read_text())["identity"]
    changes = differences(stored, identity)
    if changes:
        raise RecipeError([Problem("resume", f"the run changed since {checkpoint.name}: {c}") for c in changes])


def checkpoint_step(checkpoint: Path) -> int:
    return int(json.loads((checkpoint / "trainer_state.json").read_text())["step"])


def trim_events(events: Path, step: int) -> None:
    """Drop events logged after the checkpoint: the resumed run logs those steps again."""
    if not events.is_file():
        return
    kept = []
    for line in events.read_text().splitlines():
        event = json.loads(line)
        at = event.get("step") if "step" in event else int(str(event.get("eval", "step-0")).split("-")[-1])
        if at is not None and at <= step:
            kept.append(line)
    events.write_text("".join(line + "\n" for line in kept))
