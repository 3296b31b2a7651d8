"""``ift serve RUN_DIR``: the run's tuned model behind an OpenAI-compatible HTTP API.

The standard library's ``ThreadingHTTPServer`` is enough here: a thread per connection only parses, queues
and writes, while one worker thread runs the model over batches of the requests waiting together (see
:mod:`ift.builtin_plugins.serving.engine`), so an async framework would add dependencies without adding
throughput. Importing this module imports neither torch nor transformers; the command does, when it runs.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

import ift


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free port).",
)
@click.option(
    "--api-key-env",
    metavar="NAME",
    help="Require 'Authorization: Bearer <key>', the key read from environment variable NAME.",
)
@click.option("--model-name", help="Model id clients send and see (default: the run directory's name).")
@click.option(
    "--max-tokens",
    default=256,
    show_default=True,
    type=click.IntRange(1),
    help="Default max_tokens of a request that gives none.",
)
@click.option(
    "--max-tokens-limit",
    default=4096,
    show_default=True,
    type=click.IntRange(1),
    help="Largest max_tokens a request may ask for.",
)
@click.option(
    "--max-batch",
    default=8,
    show_default=True,
    type=click.IntRange(1),
    help="Requests decoded together in one batch (1: one at a time).",
)
@click.option(
    "--max-queue",
    default=64,
    show_default=True,
    type=click.IntRange(1),
    help="Requests that may wait for the model; more are answered 503 with Retry-After.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option(
    "--recipe-dir",
    type=click.Path(exists=True, file_okay=False),
    help="Folder a template file path in the recipe is relative to (default: RUN_DIR, then .).",
)
@click.option("--log-prompts", is_flag=True, help="Also log prompt and completion texts (off by default).")
@click.pass_context
def serve(
    ctx: click.Context,
    run_dir: str,
    host: str,
    port: int,
    api_key_env: str | None,
    model_name: str | None,
    max_tokens: int,
    max_tokens_limit: int,
    max_batch: int,
    max_queue: int,
    device: str,
    recipe_dir: str | None,
    log_prompts: bool,
) -> None:
    """Serve RUN_DIR's model with an OpenAI-compatible API (/v1/chat/completions, /v1/completions)."""
    from ift.builtin_plugins.serving.model import ServedModel
    from ift.builtin_plugins.serving.server import ServerOptions, make_server

    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env, "")
        if not api_key:
            raise ift.RunError(
                f"--api-key-env {api_key_env}: the environment variable {api_key_env} is not set or empty"
            )
    if not api_key and not _is_loopback(host):
        click.echo(f"warning: serving on {host} without authentication (use --api-key-env)", err=True)
    _configure_logging()
    path = Path(run_dir)
    click.echo(f"loading {path / 'model'} ...")
    served = ServedModel(path, ctx.obj["host"], device=device, recipe_dir=Path(recipe_dir) if recipe_dir else None)
    options = ServerOptions(
        model_id=model_name or path.resolve().name,
        api_key=api_key,
        log_prompts=log_prompts,
        default_max_tokens=min(max_tokens, max_tokens_limit),
        max_tokens_cap=max_tokens_limit,
        max_batch=max_batch,
        max_queue=max_queue,
    )
    server = make_server(served, options, host, port)
    bound_host, bound_port = server.server_address[:2]
    click.echo(
        f"serving model {options.model_id!r} at http://{_url_host(str(bound_host))}:{bound_port}/v1 "
        f"(auth: {'bearer token from $' + str(api_key_env) if api_key else 'none'}; batches of up to "
        f"{max_batch}, queue {max_queue}); Ctrl-C stops"
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _configure_logging() -> None:
    logger = logging.getLogger("ift.serve")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


@ift.hookimpl
def ift_register_commands(cli: Any) -> None:
    cli.add_command(serve)
