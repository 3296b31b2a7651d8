"""``ift preview``: rendered examples with the trainable part marked, before any training."""

from __future__ import annotations

from typing import Any

import click

from ift.data import DataReport, apply_transforms, encode_records, read_sources, split_records
from ift.host import PluginHost
from ift.pipeline import make_renderer
from ift.recipe import Recipe

OPEN, CLOSE = "\u27e6", "\u27e7"  # ⟦ trainable ⟧


def preview(recipe: Recipe, host: PluginHost, n: int, *, color: bool) -> list[dict[str, Any]]:
    """Print ``n`` training examples; return what was printed (for tests)."""
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
    for record in train[:n]:
        segments = renderer.render(record)
        examples, _ = encode_records([record], renderer, adapter, tokenizer, recipe.trainer_config, "preview",
                                     report)
        parts = []
        for seg in segments:
            if seg.trainable:
                text = f"{OPEN}{seg.text}{CLOSE}"
                parts.append(click.style(text, fg="green", bold=True) if color else text)
            else:
                parts.append(seg.text)
        info = report.encoding["preview"]
        tokens = info["tokens"]
        trainable = info["trainable_tokens"]
        click.echo(click.style(f"--- {record.id} (source {record.source}): {tokens} tokens, {trainable} "
                               f"trainable" + ("" if examples else f", dropped: {info['reasons']}"),
                               fg="cyan" if color else None))
        click.echo("".join(parts))
        shown.append({"id": record.id, "tokens": tokens, "trainable_tokens": trainable,
                      "segments": [(s.text, s.trainable) for s in segments]})
    return shown
