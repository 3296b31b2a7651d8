"""docs/data.md states the builtin templates' exact text and the defaults it documents."""

from __future__ import annotations

from pathlib import Path

import pytest

from ift.builtin_plugins.builders.self_instruct import SelfInstructConfig
from ift.builtin_plugins.builders.similarity import TfidfBackend, TfidfConfig
from ift.builtin_plugins.cleaning.neardup import NearDedupConfig

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "data.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["alpaca", "chatml", "plain"])
def test_every_builtin_template_is_quoted_exactly(name: str) -> None:
    text = (ROOT / "builtin_plugins" / "templates" / f"{name}.jinja").read_text(encoding="utf-8")
    assert f"### `{name}`\n\n```jinja\n{text}```" in DOC


def test_documented_defaults_match_the_code() -> None:
    near = NearDedupConfig.model_validate({})
    assert (near.by, near.method, near.threshold, near.num_perm, near.max_candidates) == \
        ("conversation", "minhash", 0.7, 128, 100)
    assert TfidfConfig.model_validate({}).stop_words == "english"
    si = SelfInstructConfig.model_fields
    assert (si["max_repetition"].default, si["min_quality"].default, si["min_words"].default) == (0.3, 0.5, 3)
    for claim in ("`threshold = 0.7`", "`stop_words = \"english\"` by default", "`max_repetition` (default 0.3)",
                  "`num_perm = 128`", "`max_candidates = 100`"):
        assert claim in DOC


def test_stop_words_none_keeps_every_word() -> None:
    backend = TfidfBackend(TfidfConfig.model_validate({"stop_words": "none"}))
    backend.fit(["the cat", "of the dog"])
    assert "the" in backend.vectorizer.vocabulary_
