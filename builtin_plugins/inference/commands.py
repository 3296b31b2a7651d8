"""``ift generate``, ``ift chat`` and ``ift export``: each parses, opens the run, calls the adapter, prints.

Progress and notes go to stderr, answers to stdout, so ``ift generate ... > answers.jsonl`` keeps only answers.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

import ift

RUN_DIR = click.Path(exists=True, file_okay=False)
MODEL_HELP = (
    "Use this model folder instead of RUN_DIR/model: an `ift export` folder, or its int8/ copy "
    "(CPU). The template still comes from the run."
)


def _model_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--model`` and ``--device``: which model folder of the run to load, and where; the same wherever
    :func:`_open` loads one."""
    command = click.option(
        "--device", default=None, help="auto, cpu, cuda, cuda:N or mps (default: the run's model.device)."
    )(command)
    return click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False), help=MODEL_HELP)(command)


def _open(ctx: click.Context, run_dir: str, model_dir: str | None, device: str | None) -> Any:
    from ift.builtin_plugins.inference.runs import open_run, read_run

    read_run(Path(run_dir))  # a folder that is no finished run is refused before any model loads
    _quiet_library_progress_bars()
    click.echo(f"loading {model_dir or Path(run_dir) / 'model'} ...", err=True)
    return open_run(
        Path(run_dir), ctx.obj["host"], model_dir=Path(model_dir) if model_dir else None, device=device, merge=True
    )


def _quiet_library_progress_bars() -> None:
    """transformers' weight-loading bars would interleave with answers on a terminal."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _messages(user: str, system: str | None) -> list[ift.Message]:
    return ([ift.Message("system", system)] if system else []) + [ift.Message("user", user)]


# --- ift generate ----------------------------------------------------------------------------------


@click.command()
@click.argument("run_dir", type=RUN_DIR)
@click.argument("prompt", required=False)
@click.option(
    "--input",
    "input_file",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="JSONL file of prompts ('-': stdin). Each line: a JSON string, or an object with 'prompt', "
    "'instruction' (+ 'input'), or 'messages' ending with a user turn; optional 'id', 'system'.",
)
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(1))
@click.option("--system", help="System message placed before each prompt (rendered by the run's template).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@_model_options
@click.option("--show-prompt", is_flag=True, help="Also print each rendered prompt (to stderr).")
@click.pass_context
def generate(
    ctx: click.Context,
    run_dir: str,
    prompt: str | None,
    input_file: str | None,
    max_new_tokens: int,
    system: str | None,
    batch_size: int,
    model_dir: str | None,
    device: str | None,
    show_prompt: bool,
) -> None:
    """Answer PROMPT with RUN_DIR's model, the prompt rendered by the run's own template exactly as in
    training (PROMPT is the user message).

    Without PROMPT, prompts come from --input (JSONL) or, when piped, from stdin one per line; answers are
    then printed as JSON lines {"prompt", "completion"} (plus "id" when given)."""
    if prompt is not None and input_file is not None:
        raise click.UsageError("give either PROMPT or --input, not both")
    if prompt is None and input_file is None and sys.stdin.isatty():
        raise click.UsageError("give a PROMPT, --input FILE (JSONL), or pipe prompts on stdin (one per line)")
    if prompt is not None:
        rows = [{"prompt": prompt, "messages": _messages(prompt, system)}]
    elif input_file is not None:
        rows = list(_jsonl_prompts(input_file, system))
    else:
        rows = [
            {"prompt": line.strip(), "messages": _messages(line.strip(), system)} for line in sys.stdin if line.strip()
        ]
    run = _open(ctx, run_dir, model_dir, device)
    from ift.builtin_plugins.inference.runs import context_length, new_token_budget

    prompts, budgets = [], []
    for row in rows:
        text = run.prompt(row.pop("messages"))
        tokens = run.token_count(text)
        if run.prompt_limit and tokens > run.prompt_limit:
            where = f"{input_file}:{row['line']}: " if "line" in row else ""
            click.echo(
                f"note: {where}the prompt is {tokens} tokens; the model is given its last "
                f"{run.prompt_limit} (the length the run was trained with)",
                err=True,
            )
            tokens = run.prompt_limit
        budget = new_token_budget(run, tokens, max_new_tokens)
        if budget < 1:
            where = f"{input_file}:{row['line']}: " if "line" in row else ""
            raise ift.DataError(
                f"{where}the prompt is {tokens} tokens and fills the model's context of "
                f"{context_length(run.model)} tokens; nothing is left to generate"
            )
        if budget < max_new_tokens:
            click.echo(
                f"note: --max-new-tokens {max_new_tokens} lowered to {budget} to fit the model's context "
                f"({tokens} prompt tokens)",
                err=True,
            )
        if show_prompt:
            click.echo(f"--- prompt ---\n{text}\n--- end of prompt ---", err=True)
        prompts.append(text)
        budgets.append(budget)
    answers = [""] * len(prompts)
    for budget in sorted(set(budgets)):  # prompts that share a budget are generated together, in batches
        picked = [i for i, b in enumerate(budgets) if b == budget]
        for i, answer in zip(
            picked,
            run.generate([prompts[i] for i in picked], max_new_tokens=budget, batch_size=batch_size),
            strict=True,
        ):
            answers[i] = answer
    if prompt is not None:
        click.echo(answers[0])
        return
    for row, answer in zip(rows, answers, strict=True):
        row.pop("line", None)
        click.echo(json.dumps({**row, "completion": answer}, ensure_ascii=False))


def _jsonl_prompts(path: str, system: str | None) -> Iterator[dict[str, Any]]:
    stream = click.open_file(path, encoding="utf-8")
    with stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ift.DataError(f"not JSON: {exc}", file=path, line=number) from None
            yield {"line": number, **_prompt_row(row, system, path, number)}


def _prompt_row(row: Any, system: str | None, path: str, number: int) -> dict[str, Any]:
    def fail(message: str) -> ift.DataError:
        return ift.DataError(message, file=path, line=number)

    if isinstance(row, str):
        return {"prompt": row, "messages": _messages(row, system)}
    if not isinstance(row, dict):
        raise fail(f"expected a JSON string or object, got {type(row).__name__}")
    head = {"id": row["id"]} if "id" in row else {}
    row_system = row.get("system", system)
    if isinstance(row.get("messages"), list):
        try:
            messages = [ift.Message(str(m["role"]), str(m["content"])) for m in row["messages"]]
        except (KeyError, TypeError):
            raise fail("every item of 'messages' needs 'role' and 'content'") from None
        if not messages or messages[-1].role != "user":
            raise fail("'messages' must end with a user turn (the one to answer)")
        if row_system and messages[0].role != "system":
            messages.insert(0, ift.Message("system", str(row_system)))
        return {**head, "prompt": messages[-1].content, "messages": messages}
    if isinstance(row.get("prompt"), str):
        text = row["prompt"]
    elif isinstance(row.get("instruction"), str):
        extra = row.get("input") or ""
        text = f"{row['instruction']}\n\n{extra}" if str(extra).strip() else row["instruction"]
    else:
        raise fail("a prompt row needs 'prompt', 'instruction' or 'messages'")
    return {**head, "prompt": text, "messages": _messages(text, row_system)}


# --- ift chat --------------------------------------------------------------------------------------


@click.command()
@click.argument("run_dir", type=RUN_DIR)
@click.option("--system", help="System message at the start of the conversation.")
@click.option("--max-new-tokens", default=256, show_default=True, type=click.IntRange(1))
@_model_options
@click.option("--show-prompt", is_flag=True, help="Print the rendered prompt of each turn (to stderr).")
@click.pass_context
def chat(
    ctx: click.Context,
    run_dir: str,
    system: str | None,
    max_new_tokens: int,
    model_dir: str | None,
    device: str | None,
    show_prompt: bool,
) -> None:
    """Talk with RUN_DIR's model. Each turn renders the whole conversation with the run's template.

    /reset starts a new conversation, /exit (or end of input) quits. Reads lines from stdin when it is not a
    terminal, printing one answer per line."""
    from ift.builtin_plugins.inference.runs import context_length

    run = _open(ctx, run_dir, model_dir, device)
    interactive = sys.stdin.isatty()
    context = context_length(run.model)
    generative = getattr(run.adapter, "generates_text", True)
    # A reply needs room: at most a quarter of the context is reserved for it (as `ift generate` fits its budget,
    # a long history is trimmed before the reply is cut); a classifier reserves none.
    reserve = min(max_new_tokens, max(context // 4, 1)) if generative else 0
    limit = context - reserve
    if generative and run.prompt_limit:  # the oldest exchanges go first, to fit the length the run trained with
        limit = min(limit, run.prompt_limit)
    if interactive:
        click.echo(
            f"chatting with {run.name} (template {run.resolved['template'].get('name')!r}, "
            f"{run.renderer.template_hash()}); /reset clears the conversation, /exit quits"
        )
    history: list[ift.Message] = []
    head = [ift.Message("system", system)] if system else []
    while (line := _read_line(interactive)) is not None:
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history.clear()
            click.echo("(new conversation)", err=True)
            continue
        if text.startswith("/") and " " not in text:
            click.echo(f"unknown command {text}; commands: /reset, /exit", err=True)
            continue
        user = ift.Message("user", text)
        try:
            prompt, dropped = _fit(run, head, history, user, limit)
        except ift.IftError as exc:
            click.echo(f"error: {exc}", err=True)
            continue
        if dropped:
            del history[:dropped]
            click.echo(f"(dropped the oldest {dropped // 2} exchange(s) to fit the model's context)", err=True)
        if show_prompt:
            click.echo(f"--- prompt ---\n{prompt}\n--- end of prompt ---", err=True)
        budget = max_new_tokens if not generative else max(1, min(max_new_tokens, context - run.token_count(prompt)))
        answer = run.generate([prompt], max_new_tokens=budget, batch_size=1)[0]
        click.echo(f"assistant> {answer}" if interactive else answer)
        history += [user, ift.Message("assistant", answer)]


def _read_line(interactive: bool) -> str | None:
    if interactive:
        try:
            return input("you> ")
        except EOFError:
            return None
    line = sys.stdin.readline()
    return line if line else None


def _fit(
    run: Any, head: list[ift.Message], history: list[ift.Message], user: ift.Message, limit: int
) -> tuple[str, int]:
    """The prompt for this turn and how many of the oldest history messages had to go (whole exchanges) so it
    fits ``limit`` tokens; an error when even the new message alone does not fit."""
    dropped = 0
    while True:
        prompt = run.prompt([*head, *history[dropped:], user])
        tokens = run.token_count(prompt)
        if tokens <= limit:
            return prompt, dropped
        if dropped >= len(history):
            if run.prompt_limit and limit <= run.prompt_limit:  # the model gets its last prompt_limit tokens
                return prompt, dropped
            raise ift.RunError(
                f"this message makes a {tokens}-token prompt; with --max-new-tokens the model's "
                f"context leaves room for {max(limit, 0)}"
            )
        dropped += 2


# --- ift export ------------------------------------------------------------------------------------


@click.command("export")
@click.argument("run_dir", type=RUN_DIR)
@click.option(
    "--merge",
    is_flag=True,
    help="Merge the run's LoRA weights into the base model (merge_and_unload). Needed for LoRA runs; "
    "refused for fully fine-tuned runs, which have nothing to merge.",
)
@click.option(
    "--quantize",
    type=click.Choice(["int8"]),
    help="Also write int8/: torch dynamic int8 quantization of the Linear layers, for CPU inference, "
    "measured against the export on the run's eval split.",
)
@click.option(
    "--gguf",
    "as_gguf",
    is_flag=True,
    help="Also write <name>-<quant>.gguf (llama architecture; LoRA merged first) with the run's tokenizer "
    "and chat template, and an Ollama Modelfile beside it.",
)
@click.option(
    "--quant",
    type=click.Choice(["f16", "q8_0"]),
    default="f16",
    show_default=True,
    help="Tensor type of the GGUF's weight matrices (with --gguf).",
)
@click.option("--output", "-o", type=click.Path(file_okay=False), help="Export folder (default RUN_DIR/export).")
@click.option("--overwrite", is_flag=True, help="Replace an existing export folder (only once the new one is ready).")
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="Where the merge and the export's evaluation run; the int8 copy always runs on the CPU.",
)
@click.option("--json", "as_json", is_flag=True, help="Print export_report.json instead of the table.")
@click.pass_context
def export(
    ctx: click.Context,
    run_dir: str,
    merge: bool,
    quantize: str | None,
    as_gguf: bool,
    quant: str,
    output: str | None,
    overwrite: bool,
    device: str,
    as_json: bool,
) -> None:
    """Write RUN_DIR's model as a standalone Hugging Face folder (tokenizer, generation config, README with the
    run, template hash and merge), and with --quantize int8 a CPU copy with its size and metric change."""
    from ift.builtin_plugins.inference.export import export_run
    from ift.builtin_plugins.inference.export_card import summary_table

    _quiet_library_progress_bars()
    report = export_run(
        Path(run_dir),
        ctx.obj["host"],
        output=Path(output) if output else None,
        merge=merge,
        quantize=quantize,
        overwrite=overwrite,
        device=device,
        gguf=quant if as_gguf else None,
        echo=lambda text: click.echo(text, err=True),
    )
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(summary_table(report))
    click.echo(
        f"exported: {report['output']}"
        + (f"  (int8 copy: {Path(report['output']) / 'int8'})" if report.get("int8") else "")
    )
    if report.get("gguf"):
        gguf_path = Path(report["output"]) / report["gguf"]["file"]
        click.echo(
            f"gguf: {gguf_path}  (Ollama: cd {gguf_path.parent} && ollama create {report['run_name']} -f Modelfile)"
        )
