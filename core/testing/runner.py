"""Run a recipe in-process exactly as ``ift run`` does (the same click command, the same pipeline), with a
plugin host the test controls, and hand back the run directory."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ift.testing.samples import FileContent, write_files
from ift.testing.toml import dumps


class RunFailed(AssertionError):
    """A run given to :func:`run_recipe` failed. ``str()`` is the run's own error; ``exit_code`` the code
    ``ift run`` would have exited with; ``run_dir`` the (failed) run directory, if one was made."""

    def __init__(self, message: str, *, exit_code: int, run_dir: Path) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.run_dir = run_dir


def recipe_text(recipe: str | Mapping[str, Any]) -> str:
    """TOML text of a recipe given as text or as a dict."""
    return recipe if isinstance(recipe, str) else dumps(recipe)


def run_recipe(
    recipe: str | Mapping[str, Any],
    *,
    host: Any,
    folder: Path,
    files: Mapping[str, FileContent] | None = None,
    overrides: Sequence[str] = (),
    output_dir: Path | None = None,
    check: bool = True,
) -> Path:
    """Write ``recipe`` (TOML text or a dict) as ``folder/recipe.toml`` beside ``files``, run it through the
    ``ift run`` command with ``host`` and return the run directory (``folder/run`` by default).

    With ``check`` (the default) a failed run raises :class:`RunFailed` carrying the run's error message;
    without it the run directory is returned either way (its ``status.json`` says what happened). Plugins the
    recipe loads itself (``[plugins] local = [...]``) are unregistered from ``host`` afterwards.
    """
    from ift.cli import cli
    from ift.errors import EXIT_BUG, IftError

    folder.mkdir(parents=True, exist_ok=True)
    write_files(folder, files or {})
    path = folder / "recipe.toml"
    path.write_text(recipe_text(recipe), encoding="utf-8")
    out = output_dir if output_dir is not None else folder / "run"
    args = ["run", str(path), "--output-dir", str(out)]
    for assignment in overrides:
        args += ["--set", assignment]
    before = set(host.plugins)
    error: str | None = None
    code = 0
    try:
        cli.main(args=args, prog_name="ift", obj={"host": host}, standalone_mode=False)
    except IftError as exc:
        error, code = str(exc), exc.exit_code
    except Exception as exc:
        if check:
            raise  # a bug in ift or a plugin: keep the traceback
        error, code = f"{type(exc).__name__}: {exc}", EXIT_BUG
    finally:
        for name in set(host.plugins) - before:
            host.unregister(name)
    if error is not None and check:
        raise RunFailed(f"ift run {path} failed (exit code {code}): {error}", exit_code=code, run_dir=out)
    if error is None and check:
        status = _status(out)
        if status.get("status") != "completed":
            raise RunFailed(f"ift run {path} did not complete: {status}", exit_code=code, run_dir=out)
    return out


def _status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"status": "missing", "error": f"no readable status.json in {run_dir}"}
