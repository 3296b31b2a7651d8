"""The ``decontaminate`` transform: drop training records that share word n-grams with the eval set
(the GPT-3 paper's 13-gram overlap test, Brown et al. 2020, appendix C)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

import ift
from ift.builtin_plugins.cleaning.text import is_eval, words
from ift.records import RowError, normalize_row

Fields = Literal["prompt", "answer", "conversation"]


def _texts(record: ift.InstructionRecord, fields: Fields) -> list[str]:
    if fields == "prompt":
        return [m.content for m in record.messages if m.role == "user"]
    if fields == "answer":  # both answers of a preference pair
        return [m.content for m in record.completions]
    return [m.content for m in record.messages] + ([record.rejected.content] if record.rejected else [])


def ngrams(record: ift.InstructionRecord, n: int, fields: Fields = "prompt", min_words: int = 4) -> set[str]:
    """Word n-grams of each selected turn (never across turns). A turn shorter than ``n`` words but of at
    least ``min_words`` words counts as one n-gram of its whole text, so a short prompt copied verbatim is
    still caught; shorter turns ("yes", "Paris") are too common to mean anything and are ignored."""
    grams: set[str] = set()
    for text in _texts(record, fields):
        tokens = words(text)
        if len(tokens) < min(n, min_words):
            continue
        if len(tokens) <= n:
            grams.add(" ".join(tokens))
        else:
            grams.update(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return grams


def contamination(
    records: Iterable[ift.InstructionRecord],
    eval_records: Iterable[ift.InstructionRecord],
    *,
    n: int = 13,
    fields: Fields = "prompt",
    min_words: int = 4,
) -> list[float]:
    """For each record, the share of its n-grams found in the eval records' n-grams (0 when it has none)."""
    eval_grams: set[str] = set()
    for record in eval_records:
        eval_grams |= ngrams(record, n, fields, min_words)
    shares = []
    for record in records:
        grams = ngrams(record, n, fields, min_words)
        shares.append(len(grams & eval_grams) / len(grams) if grams and eval_grams else 0.0)
    return shares


def read_eval_file(path: Path, fmt: str = "auto") -> list[ift.InstructionRecord]:
    """Records of a JSON Lines file (one row per line, in any format ``ift`` reads)."""
    ift.check_data_file(path, "eval file")
    out = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row: Any = json.loads(line)
                if not isinstance(row, dict):
                    raise RowError("each line must be a JSON object")
                messages, extras = normalize_row(row, fmt)
            except (json.JSONDecodeError, RowError) as exc:
                raise ift.DataError(f"bad eval row: {exc}", file=str(path), line=line_no) from None
            out.append(ift.InstructionRecord(f"{path.name}:{line_no}", "decontaminate", messages, **extras))
    return out


class DecontaminateConfig(ift.ComponentConfig):
    n: int = Field(13, gt=0, description="n-gram length in words.")
    threshold: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Drop a training record when more than this share of "
        "its n-grams occur in the eval set (0: any shared n-gram).",
    )
    fields: Fields = Field("prompt", description="Text compared: the user turns, the answer, or every turn.")
    min_words: int = Field(
        4,
        gt=0,
        description="A turn shorter than n words is compared whole if it has at least "
        "this many words; shorter turns are ignored.",
    )
    eval_split: bool = Field(True, description='Use the records of eval-only tables (split = "eval").')
    eval_path: str | None = Field(None, description="Also an external eval set: a JSONL file.")
    eval_format: str = Field("auto", description="Format of eval_path rows (alpaca, messages, ...).")


class Decontaminate(ift.Transform):
    """Drop training records whose n-gram overlap with the eval set exceeds the threshold. Eval records are
    never dropped. Relative ``eval_path`` values resolve against ``base_dir`` (the recipe's folder) when the
    core passes it, else against the working directory."""

    name = "decontaminate"
    Config = DecontaminateConfig
    config: DecontaminateConfig

    def __init__(self, config: ift.ComponentConfig, *, base_dir: Path | None = None, **kwargs: Any) -> None:
        super().__init__(config, base_dir=base_dir, **kwargs)

    def eval_records(self, records: list[ift.InstructionRecord]) -> list[ift.InstructionRecord]:
        c = self.config
        found = [r for r in records if is_eval(r)] if c.eval_split else []
        if c.eval_path is not None:
            path = Path(c.eval_path).expanduser()
            if not path.is_absolute() and self.base_dir is not None:
                path = self.base_dir / path
            found += read_eval_file(path, c.eval_format)
        return found

    def apply(self, records: list[ift.InstructionRecord], tally: ift.Tally) -> list[ift.InstructionRecord]:
        c = self.config
        reference = self.eval_records(records)
        if not reference:
            raise ift.DataError(
                "decontaminate has no eval set to compare with: add a [[data]] table with "
                'split = "eval", or set eval_path on the transform'
            )
        train = [r for r in records if not is_eval(r)]
        shares = iter(contamination(train, reference, n=c.n, fields=c.fields, min_words=c.min_words))
        kept = []
        for record in records:
            if is_eval(record) or next(shares) <= c.threshold:
                kept.append(record)
            else:
                tally.drop("overlaps eval set")
        return kept
