"""The ``ift`` command line. Each command parses, calls the core, prints; errors become one line and a
documented exit code (see README, "Exit codes")."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ift.errors import EXIT_BUG, EXIT_INTERRUPTED, EXIT_OK, IftError


def _host(ctx: click.Context, local: list[str] | tuple[str, ...] = ()) -> Any:
    host = ctx.obj["host"]
    for path in local:
        host.load_local(Path(path))
    return host


def _load(
    ctx: click.Context, recipe_path: str, overrides: tuple[str, ...] = (), *, compile_template: bool = False
) -> Any:
    from ift.api import load_validated

    host = _host(ctx)
    return load_validated(Path(recipe_path), host, list(overrides), compile_template=compile_template), host


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ift")
@click.option(
    "--traceback",
    "show_traceback",
    is_flag=True,
    envvar="IFT_TRACEBACK",
    help="On an error, print the Python traceback above the one-line message (for a plugin's error: the "
    "plugin's own traceback, chained). Also IFT_TRACEBACK=1.",
)
@click.pass_context
def cli(ctx: click.Context, show_traceback: bool) -> None:
    """Instruction fine-tuning from TOML recipes."""
    ctx.obj["traceback"] = show_traceback or ctx.obj.get("traceback", False)


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option(
    "--output-dir", "-o", type=click.Path(file_okay=False), help="Run directory (default runs/<name>-<time>)."
)
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key, e.g. trainer.epochs=2."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing, non-empty --output-dir.")
@click.option(
    "--resume",
    is_flag=False,
    flag_value="auto",
    default=None,
    metavar="[CHECKPOINT]",
    help="Continue the run in --output-dir from its newest good checkpoint, or from CHECKPOINT.",
)
@click.pass_context
def run(
    ctx: click.Context,
    recipe: str,
    output_dir: str | None,
    overrides: tuple[str, ...],
    overwrite: bool,
    resume: str | None,
) -> None:
    """Train and evaluate as the RECIPE says; leave a run directory."""
    from ift.api import execute_run
    from ift.report import before_after_table
    from ift.runtime import is_main_process

    parsed, host = _load(ctx, recipe, overrides)
    outcome = execute_run(
        parsed, host, Path(output_dir) if output_dir else None, overwrite=overwrite, resume=resume, echo=click.echo
    )
    if outcome.metrics is not None and is_main_process():
        click.echo(before_after_table(outcome.metrics))
        click.echo(f"done: {outcome.output_dir}  (model: {outcome.output_dir / 'model'})")


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--json", "as_json", is_flag=True, help="Print the resolved recipe as JSON.")
@click.pass_context
def validate(ctx: click.Context, recipe: str, overrides: tuple[str, ...], as_json: bool) -> None:
    """Check RECIPE without loading data or models; report every problem at once."""
    from ift.recipe import read_toml

    raw, _ = read_toml(Path(recipe))
    if "model" not in raw and not any(o.split("=", 1)[0].strip().startswith("model") for o in overrides):
        # a data recipe: `ift data build` / `ift data report` need no [model], and validate agrees
        from ift.builtin_plugins.data_cli import load_data_recipe

        parsed = load_data_recipe(_host(ctx), recipe, overrides)
        if as_json:
            resolved = parsed.resolved()
            resolved.pop("model", None)
            click.echo(json.dumps(resolved, indent=2))
        else:
            click.echo(
                f"{recipe}: valid as a data recipe ({len(parsed.data)} data source(s), "
                f"{len(parsed.transforms)} transform(s)) for `ift data build` and `ift data report`; "
                "`ift run` also needs a [model] table"
            )
        return
    parsed, host = _load(ctx, recipe, overrides, compile_template=True)  # template syntax errors are recipe errors
    if as_json:
        click.echo(json.dumps(parsed.resolved(), indent=2))
    else:
        click.echo(
            f"{recipe}: valid ({len(parsed.data)} data source(s), template {parsed.template.name!r}, "
            f"model adapter {parsed.model.name!r}, trainer {parsed.trainer.name!r})"
        )


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """List loaded plugins, what they register, and plugins that failed to load."""
    from ift.redact import redact_value

    host = _host(ctx)
    rows = host.describe()
    failures = [redact_value(vars(f)) for f in host.failures]  # a plugin's import error may quote a URL
    if as_json:
        click.echo(json.dumps({"plugins": rows, "failed": failures}, indent=2))
        return
    for row in rows:
        click.echo(f"{row['name']}  ({row['distribution']} {row['version']}, {row['origin']})")
        for kind, names in sorted(row["registered"].items()):
            click.echo(f"    {kind}: {', '.join(names)}")
    for failure in failures:
        click.echo(f"FAILED {failure['name']}  ({failure['distribution']} {failure['version']}): {failure['error']}")


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("-n", "count", default=3, show_default=True, help="How many training examples to show.")
@click.option(
    "--tokens", "tokens", is_flag=True, help="List every token with its label state (straddling tokens marked)."
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.pass_context
def preview(ctx: click.Context, recipe: str, count: int, tokens: bool, overrides: tuple[str, ...]) -> None:
    """Show rendered training examples with the trainable text marked, and token counts."""
    from ift.previewing import preview as show

    parsed, host = _load(ctx, recipe, overrides)
    show(parsed, host, count, color=sys.stdout.isatty(), tokens=tokens)


def main(argv: list[str] | None = None) -> int:
    """Entry point: build the plugin host, add plugin commands, run, map errors to exit codes."""
    import warnings

    from ift.host import PluginHost
    from ift.redact import install, redact

    install()  # credentials in URLs are masked in every log record and warning (huggingface_hub logs its retries)
    warnings.filterwarnings("default", module="ift.host")
    obj: dict[str, Any] = {"traceback": _traceback_from_env()}
    try:
        obj["host"] = host = PluginHost()
        host.register_commands(cli)
        cli.main(args=argv, prog_name="ift", obj=obj, standalone_mode=False)
    except IftError as exc:
        if obj.get("traceback"):  # asked for: the traceback, with what it was raised from (a plugin's own error)
            import traceback

            click.echo(redact("".join(traceback.format_exception(exc))).rstrip(), err=True)
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)
    except Exception:
        import traceback

        click.echo(redact(traceback.format_exc()).rstrip(), err=True)  # a URL with credentials stays masked
        click.echo("error: internal error (a bug in ift or a plugin); the traceback is above", err=True)
        return EXIT_BUG
    return EXIT_OK


def _traceback_from_env() -> bool:
    """IFT_TRACEBACK=1 (or true/yes/on), for errors raised before the command line is parsed (plugin loading)."""
    import os

    return os.environ.get("IFT_TRACEBACK", "").strip().lower() in ("1", "true", "yes", "on")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
