"""``ift preview``: rendered examples with the trainable part marked, before any training."""

from __future__ import annotations

from typing import Any

import click

from ift.data import DataReport, apply_transforms, bad_record_policy, encode_records, read_sources, split_records
from ift.host import PluginHost
from ift.pipeline import make_renderer
from ift.recipe import Recipe

OPEN, CLOSE = "\u27e6", "\u27e7"  # ⟦ trainable ⟧


def token_table(adapter: Any, tokenizer: Any, segments: list[Any]) -> list[dict[str, Any]]:
    """Each token of an encoded example: its id, text, whether it is trained, and whether it straddles the
    prompt/answer boundary (begins in the prompt, reaches into the answer: never trained)."""
    from ift.builtin_plugins import token_labels

    text, mask = token_labels.trainable_mask(segments)
    ids, offsets = token_labels.encode_with_offsets(tokenizer, text)
    result = token_labels.labels_from_offsets(ids, offsets, mask)
    example = adapter.encode(tokenizer, segments, source="", record_id="")
    rows = [{"id": tid, "text": text[a:b], "trained": label != -100, "straddles": i in result.straddling}
            for i, (tid, (a, b), label) in enumerate(zip(ids, offsets, result.labels, strict=True))]
    if len(example.input_ids) == len(ids) + 1:  # the BOS the adapter prepends
        rows.insert(0, {"id": example.input_ids[0], "text": str(getattr(tokenizer, "bos_token", "")),
                        "trained": False, "straddles": False})
    return rows


def _show_tokens(rows: list[dict[str, Any]], color: bool) -> None:
    for i, row in enumerate(rows):
        state = "STRADDLES (untrained)" if row["straddles"] else ("trained" if row["trained"] else "-")
        line = f"  {i:>5} {row['id']:>7}  {row['text']!r:<30} {state}"
        fg = "yellow" if row["straddles"] else ("green" if row["trained"] else None)
        click.echo(click.style(line, fg=fg) if color and fg else line)


def _marked(text: str, color: bool) -> str:
    text = f"{OPEN}{text}{CLOSE}"
    return click.style(text, fg="green", bold=True) if color else text


def preview(recipe: Recipe, host: PluginHost, n: int, *, color: bool,
            tokens: bool = False) -> list[dict[str, Any]]:
    """Print ``n`` training examples (with ``tokens``, each token and its label state); return what was printed
    (for tests)."""
    report = DataReport()
    records = apply_transforms(recipe, host, read_sources(recipe, host, report), report)
    train, held = split_records(recipe, records, report)
    adapter = recipe.model.cls(recipe.model.config, base_dir=recipe.base_dir)
    tokenizer = adapter.load_tokenizer()
    # as a run does before encoding (a classifier derives its labels here)
    adapter.prepare_data(train, max_length=recipe.trainer_config.max_length)
    renderer = make_renderer(recipe, host)
    renderer.bind(tokenizer)
    shown = []
    click.echo(f"{len(train)} train / {len(held)} eval records; trainable text is shown as "
               f"{OPEN}...{CLOSE}" + (" in green" if color else ""))
    bad = bad_record_policy(recipe)
    for record in train[:n]:
        examples, _ = encode_records([record], renderer, adapter, tokenizer, recipe.trainer_config, "preview",
                                     report, bad_records=bad)
        if not examples and report.encoding["preview"]["reasons"].get("the template refuses the record"):
            click.echo(f"--- {record.id} (source {record.source}): skipped, the template refuses it")
            continue
        if record.preference is not None:  # each completion after the shared prompt, as they are trained
            renderings = renderer.render_completions(record)
            names = ["chosen", "rejected"] if record.preference == "pair" else \
                ["desirable" if record.desirable else "undesirable"]
        else:
            renderings, names = [renderer.render(record)], [""]
        info = report.encoding["preview"]
        count = info["tokens"]
        trainable = info["trainable_tokens"]
        straddles = info.get("straddling", {}).get("tokens", 0)
        head = f"--- {record.id} (source {record.source}): {count} tokens, {trainable} trainable"
        head += f", {straddles} straddling" if straddles else ""
        head += "" if examples else f", dropped: {info['reasons']}"
        click.echo(click.style(head, fg="cyan" if color else None))
        for segments, name in zip(renderings, names, strict=True):
            if name:
                click.echo(f"[{name}]")
            click.echo("".join(_marked(seg.text, color) if seg.trainable else seg.text for seg in segments))
        segments = renderings[0]
        entry = {"id": record.id, "tokens": count, "trainable_tokens": trainable,
                 "segments": [(s.text, s.trainable) for s in segments]}
        if len(renderings) > 1:
            entry["rejected_segments"] = [(s.text, s.trainable) for s in renderings[1]]
        if tokens:
            rows = token_table(adapter, tokenizer, segments)
            click.echo("  index      id  token                          label")
            _show_tokens(rows, color)
            entry["token_rows"] = rows
        shown.append(entry)
    for notice in renderer.notices():
        click.echo(click.style(f"warning: {notice}", fg="yellow") if color else f"warning: {notice}")
    return shown
