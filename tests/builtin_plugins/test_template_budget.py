"""Templates that would hang or exhaust memory are refused with one line, while compiling or rendering."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import ift
from ift.builtin_plugins.renderers import JinjaFileRenderer
from ift.templating import sandboxed_environment

RECORD = ift.InstructionRecord(id="r1", source="s", messages=[ift.Message("user", "q"), ift.Message("assistant", "a")])


COMPILE_IN_CHILD = """
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from ift.builtin_plugins.renderers import JinjaFileRenderer
JinjaFileRenderer(JinjaFileRenderer.Config.model_validate({"path": "t.jinja"}), base_dir=Path(sys.argv[1]))
print("compiled")
"""


def renderer(tmp_path: Path, text: str) -> JinjaFileRenderer:
    (tmp_path / "t.jinja").write_text(text)
    return JinjaFileRenderer(JinjaFileRenderer.Config.model_validate({"path": "t.jinja"}), base_dir=tmp_path)


@pytest.mark.parametrize(
    "text",
    [
        '{{ "x" * 100000000000 }}{% generation %}a{% endgeneration %}',
        "{{ 9 ** 999999999 }}{% generation %}a{% endgeneration %}",
        '{{ ""|center(100000000000) }}{% generation %}a{% endgeneration %}',
    ],
)
def test_huge_constants_are_not_folded_while_compiling(tmp_path: Path, text: str) -> None:
    # `ift validate` compiles: this used to hang or exhaust memory. Compiled first in a child process with a
    # time and memory limit, so that a regression fails this test instead of hanging or starving the machine.
    (tmp_path / "t.jinja").write_text(text)
    child = subprocess.run(
        [sys.executable, "-c", COMPILE_IN_CHILD, str(tmp_path)], capture_output=True, text=True, timeout=30
    )  # a hang is killed: TimeoutExpired fails the test
    assert child.returncode == 0 and child.stdout.strip() == "compiled", child.stderr[-2000:]
    started = time.perf_counter()
    compiled = renderer(tmp_path, text)
    assert time.perf_counter() - started < 5
    with pytest.raises(ift.DataError, match=r"record 'r1': .* (more than|wider than) "):
        compiled.render(RECORD)


def test_a_huge_string_built_in_one_expression_is_refused(tmp_path: Path) -> None:
    compiled = renderer(
        tmp_path, '{% set n = messages|length * 100000000000 %}{{ "x" * n }}{% generation %}a{% endgeneration %}'
    )
    with pytest.raises(ift.DataError, match=r"'\*' would build 200,000,000,000 items, more than 10,000,000"):
        compiled.render(RECORD)


def test_unbounded_recursion_is_named(tmp_path: Path) -> None:
    compiled = renderer(tmp_path, "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}{% generation %}a{% endgeneration %}")
    with pytest.raises(ift.DataError, match="the template recurses without bound"):
        compiled.render(RECORD)


def test_ordinary_arithmetic_still_works() -> None:
    env = sandboxed_environment()
    assert (
        env.from_string('{{ "ab" * 3 }} {{ 2 ** 10 }} {{ [1] + [2] }} {{ "x"|center(5) }}').render()
        == "ababab 1024 [1, 2]   x  "
    )
