"""The sandboxed Jinja environment and the {% generation %} block that marks trainable text."""

from __future__ import annotations

from typing import Any

import pytest
from jinja2 import UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from ift.components import Segment
from ift.templating import (
    GEN_END,
    GEN_START,
    contains_sentinel,
    merge_segments,
    sandboxed_environment,
    split_segments,
)


def test_generation_block_marks_its_body_trainable() -> None:
    env = sandboxed_environment()
    template = env.from_string("Q: {{ q }}\nA: {% generation %}{{ a }}<eos>{% endgeneration %}\n")
    text = template.render(q="hi", a="yo")
    assert text == f"Q: hi\nA: {GEN_START}yo<eos>{GEN_END}\n"
    assert split_segments(text) == [Segment("Q: hi\nA: ", False), Segment("yo<eos>", True), Segment("\n", False)]


def test_environment_is_sandboxed_strict_and_keeps_trailing_newline() -> None:
    env = sandboxed_environment()
    assert isinstance(env, ImmutableSandboxedEnvironment)
    assert env.from_string("x\n").render() == "x\n"
    with pytest.raises(UndefinedError, match="'missing' is undefined"):
        env.from_string("{{ missing }}").render()
    with pytest.raises(SecurityError):
        env.from_string("{{ ''.__class__.__mro__ }}").render()
    with pytest.raises(SecurityError):
        env.from_string("{{ items.append(3) }}").render(items=[1, 2])
    assert env.from_string("{{ '<b>' }}").render() == "<b>"  # no HTML autoescaping of training text


def test_prepare_callback_customises_the_environment() -> None:
    def prepare(env: Any) -> None:
        env.filters["shout"] = lambda s: s.upper() + "!"

    env = sandboxed_environment(prepare)
    assert env.from_string("{{ 'hi' | shout }}").render() == "HI!"


def test_split_segments_without_sentinels_is_one_untrained_segment() -> None:
    assert split_segments("plain") == [Segment("plain", False)]
    assert split_segments("") == []


def test_split_segments_merges_adjacent_and_drops_empty_blocks() -> None:
    text = f"a{GEN_START}b{GEN_END}{GEN_START}c{GEN_END}{GEN_START}{GEN_END}d"
    assert split_segments(text) == [Segment("a", False), Segment("bc", True), Segment("d", False)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{GEN_START}a{GEN_START}b{GEN_END}{GEN_END}", "nested or unbalanced {% generation %} blocks"),
        (f"a{GEN_END}", "nested or unbalanced {% generation %} blocks"),
        (f"{GEN_START}a", "unclosed {% generation %} block"),
    ],
)
def test_split_segments_rejects_unbalanced_blocks(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        split_segments(text)
    assert str(info.value) == message


def test_merge_segments() -> None:
    segments = [Segment("a", False), Segment("", True), Segment("b", False), Segment("c", True), Segment("d", True)]
    assert merge_segments(segments) == [Segment("ab", False), Segment("cd", True)]


def test_contains_sentinel() -> None:
    assert contains_sentinel(f"x{GEN_START}")
    assert contains_sentinel(GEN_END)
    assert not contains_sentinel("plain text")
