"""docs/data.md states the builtin templates' exact text and the defaults it documents."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ift.builtin_plugins.builders.self_instruct import SelfInstructConfig
from ift.builtin_plugins.builders.similarity import TfidfBackend, TfidfConfig
from ift.builtin_plugins.cleaning.neardup import NearDedupConfig
from ift.builtin_plugins.renderers import ift_register_renderers

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "data.md").read_text(encoding="utf-8")


#: every renderer ift registers that renders a file shipped with it, by name
BUILTIN = {cls.name: cls.builtin_file for cls in ift_register_renderers() if getattr(cls, "builtin_file", "")}


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_builtin_template_is_quoted_exactly(name: str) -> None:
    text = (ROOT / "builtin_plugins" / "templates" / BUILTIN[name]).read_text(encoding="utf-8")
    assert f"### `{name}`\n\n```jinja\n{text}```" in DOC


def test_the_docs_quote_the_builtin_templates_and_no_others() -> None:
    section = DOC.split("## Builtin templates, exactly", 1)[1].split("\n## ", 1)[0]
    assert sorted(re.findall(r"^### `([\w-]+)`$", section, flags=re.M)) == sorted(BUILTIN)
    shipped = sorted(p.name for p in (ROOT / "builtin_plugins" / "templates").glob("*.jinja"))
    assert shipped == sorted(BUILTIN.values())  # no template file ships without a renderer (and its docs)


def test_documented_defaults_match_the_code() -> None:
    near = NearDedupConfig.model_validate({})
    assert (near.by, near.method, near.threshold, near.num_perm, near.max_candidates) == (
        "conversation",
        "minhash",
        0.7,
        128,
        100,
    )
    assert TfidfConfig.model_validate({}).stop_words == "english"
    si = SelfInstructConfig.model_fields
    assert (si["max_repetition"].default, si["min_quality"].default, si["min_words"].default) == (0.3, 0.5, 3)
    for claim in (
        "`threshold = 0.7`",
        '`stop_words = "english"` by default',
        "`max_repetition` (default 0.3)",
        "`num_perm = 128`",
        "`max_candidates = 100`",
    ):
        assert claim in DOC


def test_stop_words_none_keeps_every_word() -> None:
    backend = TfidfBackend(TfidfConfig.model_validate({"stop_words": "none"}))
    backend.fit(["the cat", "of the dog"])
    assert "the" in backend.vectorizer.vocabulary_


def test_the_documented_word_counts_are_the_codes() -> None:
    from ift.builtin_plugins.builders.instruct_filters import words as self_instruct_words
    from ift.builtin_plugins.cleaning.text import words as filter_words

    section = DOC.split('## What a "word" is', 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) == 3
    for row in rows:
        text, by_filter, by_self_instruct = (cell.strip() for cell in row.strip("|").split("|"))
        text = text.strip("`")
        count, _, listed = by_filter.partition(": ")
        assert int(count) == len(filter_words(text)) and listed.replace("`", "").split(", ") == filter_words(text)
        count, _, listed = by_self_instruct.partition(": ")
        assert int(count) == len(self_instruct_words(text))
        if listed != "the same":
            assert listed.replace("`", "").split(", ") == self_instruct_words(text)
        else:
            assert self_instruct_words(text) == filter_words(text)
