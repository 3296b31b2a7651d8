"""``ift preview``: rendered examples with the trainable part marked, before any training."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import click

from ift.data import DataReport, apply_transforms, bad_record_policy, encode_records, read_sources, split_records
from ift.host import PluginHost
from ift.pipeline import make_renderer
from ift.recipe import Recipe

OPEN, CLOSE = "\u27e6", "\u27e7"  # ⟦ trainable ⟧
TRAINED_STYLE = "background: #c8f0c8; color: #063"  # trained text in a notebook's view


def token_table(adapter: Any, tokenizer: Any, segments: list[Any]) -> list[dict[str, Any]]:
    """Each token of an encoded example: its id, text, whether it is trained, and whether it straddles the
    prompt/answer boundary (begins in the prompt, reaches into the answer: never trained)."""
    from ift.builtin_plugins import token_labels

    text, mask = token_labels.trainable_mask(segments)
    ids, offsets = token_labels.encode_with_offsets(tokenizer, text)
    result = token_labels.labels_from_offsets(ids, offsets, mask)
    example = adapter.encode(tokenizer, segments, source="", record_id="")
    rows = [
        {"id": tid, "text": text[a:b], "trained": label != -100, "straddles": i in result.straddling}
        for i, (tid, (a, b), label) in enumerate(zip(ids, offsets, result.labels, strict=True))
    ]
    if len(example.input_ids) == len(ids) + 1:  # the BOS the adapter prepends
        rows.insert(
            0,
            {
                "id": example.input_ids[0],
                "text": str(getattr(tokenizer, "bos_token", "")),
                "trained": False,
                "straddles": False,
            },
        )
    return rows


def _show_tokens(rows: list[dict[str, Any]], color: bool) -> None:
    for i, row in enumerate(rows):
        state = "STRADDLES (untrained)" if row["straddles"] else ("trained" if row["trained"] else "-")
        line = f"  {i:>5} {row['id']:>7}  {row['text']!r:<30} {state}"
        fg = "yellow" if row["straddles"] else ("green" if row["trained"] else None)
        click.echo(click.style(line, fg=fg) if color and fg else line)


@dataclass
class PreviewExample:
    """One training record as ``ift preview`` shows it: its rendered ``segments`` (text, trainable), token
    counts, and why it would not be trained on (``skipped``: the template refuses it; ``dropped``: the reasons
    encoding dropped it, e.g. too long). ``token_rows`` (with ``tokens=True``): each token's id, text, label
    state and whether it straddles the prompt / answer boundary."""

    id: str
    source: str
    segments: list[tuple[str, bool]] = field(default_factory=list)
    tokens: int = 0
    trainable_tokens: int = 0
    straddling_tokens: int = 0
    skipped: bool = False
    dropped: dict[str, int] = field(default_factory=dict)
    token_rows: list[dict[str, Any]] | None = None
    #: A preference record's other rendering: the rejected completion of a pair (``segments`` is the chosen one);
    #: ``judgement`` names them ("chosen" / "rejected", or "desirable" / "undesirable" for an unpaired record).
    rejected_segments: list[tuple[str, bool]] | None = None
    judgement: list[str] | None = None

    @property
    def text(self) -> str:
        """The rendered text, trainable parts marked ``⟦...⟧``."""
        return "".join(f"{OPEN}{text}{CLOSE}" if trainable else text for text, trainable in self.segments)

    @property
    def trainable_text(self) -> str:
        """Only the text the model is trained to produce, joined."""
        return "".join(text for text, trainable in self.segments if trainable)


@dataclass
class PreviewResult:
    """What ``ift preview`` shows, as data: the split's sizes, the first examples, the renderer's warnings."""

    train_records: int
    eval_records: int
    examples: list[PreviewExample]
    warnings: list[str]

    def __repr__(self) -> str:
        return (
            f"PreviewResult({self.train_records} train / {self.eval_records} eval records, "
            f"{len(self.examples)} example(s), {len(self.warnings)} warning(s))"
        )

    def _repr_html_(self) -> str:
        """Jupyter's view: each example with its trained text highlighted, as ``ift preview`` colours it."""
        from html import escape

        parts = [
            f"<p>{self.train_records} train / {self.eval_records} eval records; trained text is "
            f'<span style="{TRAINED_STYLE}">highlighted</span></p>'
        ]
        for example in self.examples:
            head = f"{example.id} (source {example.source})"
            if example.skipped:
                parts.append(f"<p><code>{escape(head)}</code>: skipped, the template refuses it</p>")
                continue
            facts = f"{example.tokens} tokens, {example.trainable_tokens} trainable"
            facts += f", {example.straddling_tokens} straddling" if example.straddling_tokens else ""
            facts += f", dropped: {example.dropped}" if example.dropped else ""
            body = "".join(
                f'<span style="{TRAINED_STYLE}">{escape(text)}</span>' if trainable else escape(text)
                for text, trainable in example.segments
            )
            parts.append(
                f'<p><code>{escape(head)}</code>: {escape(facts)}</p><pre style="white-space: pre-wrap">{body}</pre>'
            )
        parts.extend(f"<p>warning: {escape(w)}</p>" for w in self.warnings)
        return "\n".join(parts)


def collect_preview(recipe: Recipe, host: PluginHost, n: int, *, tokens: bool = False) -> PreviewResult:
    """Read, clean and split the recipe's data and render and tokenize its first ``n`` training records exactly
    as a run would (no model weights are loaded: only the tokenizer)."""
    report = DataReport()
    records = apply_transforms(recipe, host, read_sources(recipe, host, report), report)
    train, held = split_records(recipe, records, report)
    adapter = recipe.model.cls(recipe.model.config, base_dir=recipe.base_dir)
    tokenizer = adapter.load_tokenizer()
    # as a run does before encoding (a classifier derives its labels here)
    adapter.prepare_data(train, max_length=recipe.trainer_config.max_length)
    renderer = make_renderer(recipe, host)
    renderer.bind(tokenizer)
    result = PreviewResult(len(train), len(held), [], [])
    bad = bad_record_policy(recipe)
    for record in train[:n]:
        examples, _ = encode_records(
            [record], renderer, adapter, tokenizer, recipe.trainer_config, "preview", report, bad_records=bad
        )
        if not examples and report.encoding["preview"]["reasons"].get("the template refuses the record"):
            result.examples.append(PreviewExample(record.id, record.source, skipped=True))
            continue
        if record.preference is not None:  # each completion after the shared prompt, as they are trained
            renderings = renderer.render_completions(record)
            judgement = (
                ["chosen", "rejected"]
                if record.preference == "pair"
                else ["desirable" if record.desirable else "undesirable"]
            )
        else:
            renderings, judgement = [renderer.render(record)], None
        segments = renderings[0]
        info = report.encoding["preview"]
        example = PreviewExample(
            record.id,
            record.source,
            [(s.text, s.trainable) for s in segments],
            tokens=info["tokens"],
            trainable_tokens=info["trainable_tokens"],
            straddling_tokens=info.get("straddling", {}).get("tokens", 0),
            dropped={} if examples else dict(info["reasons"]),
        )
        example.judgement = judgement
        if len(renderings) > 1:
            example.rejected_segments = [(s.text, s.trainable) for s in renderings[1]]
        if tokens:
            example.token_rows = token_table(adapter, tokenizer, segments)
        result.examples.append(example)
    result.warnings = list(renderer.notices())
    return result


def _marked(text: str, color: bool) -> str:
    text = f"{OPEN}{text}{CLOSE}"
    return click.style(text, fg="green", bold=True) if color else text


def preview(recipe: Recipe, host: PluginHost, n: int, *, color: bool, tokens: bool = False) -> list[dict[str, Any]]:
    """Print ``n`` training examples (with ``tokens``, each token and its label state); return what was printed
    (for tests)."""
    result = collect_preview(recipe, host, n, tokens=tokens)
    click.echo(
        f"{result.train_records} train / {result.eval_records} eval records; trainable text is shown as "
        f"{OPEN}...{CLOSE}" + (" in green" if color else "")
    )
    shown = []
    for example in result.examples:
        if example.skipped:
            click.echo(f"--- {example.id} (source {example.source}): skipped, the template refuses it")
            continue
        head = (
            f"--- {example.id} (source {example.source}): {example.tokens} tokens, {example.trainable_tokens} trainable"
        )
        head += f", {example.straddling_tokens} straddling" if example.straddling_tokens else ""
        head += "" if not example.dropped else f", dropped: {example.dropped}"
        click.echo(click.style(head, fg="cyan" if color else None))
        renderings = [example.segments] + ([example.rejected_segments] if example.rejected_segments else [])
        for i, segments in enumerate(renderings):
            if example.judgement:
                click.echo(f"[{example.judgement[i]}]")
            click.echo("".join(_marked(text, color) if trainable else text for text, trainable in segments))
        entry: dict[str, Any] = {
            "id": example.id,
            "tokens": example.tokens,
            "trainable_tokens": example.trainable_tokens,
            "segments": example.segments,
        }
        if example.rejected_segments:
            entry["rejected_segments"] = example.rejected_segments
        if example.token_rows is not None:
            click.echo("  index      id  token                          label")
            _show_tokens(example.token_rows, color)
            entry["token_rows"] = example.token_rows
        shown.append(entry)
    for notice in result.warnings:
        click.echo(click.style(f"warning: {notice}", fg="yellow") if color else f"warning: {notice}")
    return shown
