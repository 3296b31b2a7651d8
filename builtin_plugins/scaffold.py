"""``ift init plugin NAME``: write a ready, installable plugin distribution (``ift-NAME``) with one working
example per chosen kind and tests that run ift's contract suites through ``ift.testing``.

The files come from the templates in ``scaffold_templates/`` (Jinja2, rendered here, not sandboxed: they are
ours). Nothing is written when NAME is invalid or the target folder already holds files.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import click

import ift
from ift.errors import EXIT_RECIPE

#: Kinds ``--kind`` accepts, in the order files and hooks are written.
KINDS = ("source", "transform", "renderer", "metric", "trainer", "peft_method")
DEFAULT_KINDS = ("source", "transform", "renderer", "metric")
KIND_CLASSES = {
    "source": "QAJsonlSource",
    "transform": "NormalizeWhitespace",
    "renderer": "QARenderer",
    "metric": "ContainsAnswer",
    "trainer": "L2SPTrainer",
    "peft_method": "LoKrMethod",
}
KIND_HOOKS = {
    "source": "ift_register_sources",
    "transform": "ift_register_transforms",
    "renderer": "ift_register_renderers",
    "metric": "ift_register_metrics",
    "trainer": "ift_register_trainers",
    "peft_method": "ift_register_peft_methods",
}
KIND_REGISTRY = {kind: kind for kind in KINDS}
CONTRACTS = {
    "source": "SourceContract",
    "transform": "TransformContract",
    "renderer": "RendererContract",
    "metric": "MetricContract",
    "trainer": "TrainerContract",
    "peft_method": "PeftMethodContract",
}
KIND_LABELS = {
    "source": "source",
    "transform": "transform",
    "renderer": "template renderer",
    "metric": "metric",
    "trainer": "trainer",
    "peft_method": "PEFT method",
}
KIND_SUMMARIES = {
    "source": "question/answer pairs from a JSON Lines file, errors with file and line",
    "transform": "tidies whitespace in every turn, drops too-short answers (both counted)",
    "renderer": "`Question:` / `Answer:` blocks; answers and EOS trainable",
    "metric": "share of answers that contain the reference",
    "trainer": "`sft` plus an L2 pull towards the initial weights (L2-SP)",
    "peft_method": "LoKr (Kronecker-product updates) through peft's `LoKrConfig`",
}
SUFFIXES = {
    "source": "qa-jsonl",
    "transform": "normalize",
    "renderer": "qa",
    "metric": "contains",
    "trainer": "sft-l2sp",
    "peft_method": "lokr",
}

_NAME = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
_MAX_NAME = 40


class ScaffoldError(ift.IftError):
    """``ift init plugin`` was given a NAME or folder it cannot use. Exit code 2, as for other usage errors."""

    exit_code = EXIT_RECIPE


def plugin_slug(name: str) -> str:
    """The plugin's name (entry point, component prefix) from NAME: ``ift-support-db`` or ``support-db`` ->
    ``support-db``. Raises :class:`ScaffoldError` with what a valid name looks like."""
    slug = name.strip()
    slug = slug[4:] if slug.startswith("ift-") else slug
    suggestion = re.sub(r"[^a-z0-9]+", "-", slug.lower()).strip("-")
    hint = f" (did you mean {suggestion!r}?)" if suggestion and _NAME.match(suggestion) and suggestion != slug else ""
    if not slug:
        raise ScaffoldError(f"invalid plugin name {name!r}: give a name after 'ift-', e.g. 'support-db'")
    if not _NAME.match(slug):
        raise ScaffoldError(
            f"invalid plugin name {name!r}: use lower-case letters, digits and single hyphens, "
            f"starting with a letter{hint}"
        )
    if len(slug) > _MAX_NAME:
        raise ScaffoldError(f"invalid plugin name {name!r}: at most {_MAX_NAME} characters")
    from ift.builtin_plugins import MODULES as BUILTIN_MODULES

    reserved = {m.rsplit(".", 1)[-1].replace("_", "-") for m in BUILTIN_MODULES} | {"ift", "testing", "local"}
    if slug in reserved:
        raise ScaffoldError(
            f"invalid plugin name {name!r}: {slug!r} is the name of a builtin ift plugin; choose another"
        )
    if keyword.iskeyword(slug.replace("-", "_")):
        raise ScaffoldError(f"invalid plugin name {name!r}: a Python keyword")
    return slug


def plan(slug: str, kinds: Sequence[str]) -> dict[str, str]:
    """Output path (relative to the package folder) -> template file, for these kinds."""
    package = "ift_" + slug.replace("-", "_")
    files = {
        "pyproject.toml": "pyproject.toml.tmpl",
        "README.md": "README.md.tmpl",
        f"src/{package}/__init__.py": "init.py.tmpl",
        f"src/{package}/plugin.py": "plugin.py.tmpl",
        "tests/conftest.py": "conftest.py.tmpl",
        "tests/test_plugin.py": "test_plugin.py.tmpl",
    }
    for kind in kinds:
        files[f"src/{package}/{kind}.py"] = f"{kind}.py.tmpl"
    return files


def render_plugin(slug: str, kinds: Sequence[str]) -> dict[str, str]:
    """The generated files' texts by relative path."""
    from jinja2 import Environment, StrictUndefined

    env = Environment(
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined, autoescape=False
    )  # noqa: S701 - Python and TOML, not HTML
    package = "ift_" + slug.replace("-", "_")
    context: dict[str, Any] = {
        "slug": slug,
        "dist": f"ift-{slug}",
        "package": package,
        "kinds": list(kinds),
        "kinds_text": ", ".join(f"{KIND_LABELS[k]} {slug}-{SUFFIXES[k]}" for k in kinds),
        "kinds_short": ", ".join(KIND_LABELS[k] for k in kinds),
        "testing_imports": sorted(
            [CONTRACTS[k] for k in kinds] + ["sample_rows"] + (["MetricCase"] if "metric" in kinds else [])
        ),
        "ift_version": _ift_version(),
        "KIND_CLASSES": KIND_CLASSES,
        "KIND_HOOKS": KIND_HOOKS,
        "KIND_REGISTRY": KIND_REGISTRY,
        "CONTRACTS": CONTRACTS,
        "KIND_LABELS": KIND_LABELS,
        "KIND_SUMMARIES": KIND_SUMMARIES,
        "COMPONENT_NAMES": {k: f"{slug}-{SUFFIXES[k]}" for k in kinds},
    }
    folder = resources.files("ift.builtin_plugins").joinpath("scaffold_templates")
    return {
        path: env.from_string(folder.joinpath(template).read_text("utf-8")).render(**context)
        for path, template in plan(slug, kinds).items()
    }


def write_plugin(name: str, kinds: Sequence[str], target: Path | None = None) -> tuple[Path, list[Path]]:
    """Create the distribution for NAME in ``target`` (default ``./ift-<name>``); returns the folder and the
    files written. Refuses a folder that exists and is not empty."""
    slug = plugin_slug(name)
    chosen = [k for k in KINDS if k in set(kinds)] or list(DEFAULT_KINDS)
    folder = Path(target) if target is not None else Path(f"ift-{slug}")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        what = "a file" if not folder.is_dir() else "a folder that is not empty"
        raise ScaffoldError(f"{folder} is {what}; nothing was written (choose another --output-dir, or remove it)")
    texts = render_plugin(slug, chosen)
    written = []
    for relative, text in texts.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return folder, written


def _ift_version() -> str:
    version = ift.__version__
    return version if re.match(r"^\d+(\.\d+)*$", version) else "0.1"


@click.group("init")
def init() -> None:
    """Create new ift projects from templates."""


@init.command("plugin")
@click.argument("name")
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice(KINDS),
    help=f"Include an example of this kind (repeatable; default: {', '.join(DEFAULT_KINDS)}).",
)
@click.option(
    "--output-dir",
    "-o",
    type=click.Path(file_okay=True, dir_okay=True),
    help="Folder to create (default ./ift-NAME); must not exist or be empty.",
)
def plugin(name: str, kinds: tuple[str, ...], output_dir: str | None) -> None:
    """Write an installable plugin distribution ift-NAME: package, entry point, examples, tests."""
    folder, written = write_plugin(name, kinds, Path(output_dir) if output_dir else None)
    slug = plugin_slug(name)
    chosen = [k for k in KINDS if k in set(kinds)] or list(DEFAULT_KINDS)
    click.echo(f"created ift-{slug} in {folder} ({len(written)} files):")
    for kind in chosen:
        click.echo(f"  {KIND_LABELS[kind]:<17} {slug}-{SUFFIXES[kind]:<12} src/ift_{slug.replace('-', '_')}/{kind}.py")
    click.echo("next:")
    click.echo(f"  cd {folder}")
    click.echo("  pip install -e '.[test]'   # registers the plugin with ift (entry point group 'ift')")
    click.echo("  python -m pytest           # contract suites + a tiny end-to-end run")
    click.echo(f"  ift plugins                # lists '{slug}'")


@ift.hookimpl
def ift_register_commands(cli: Any) -> None:
    cli.add_command(init)
