"""A battery of bad input files: each gets a clear error naming the file and line, or, with
``on_bad_rows = "skip"``, is skipped and counted by reason within ``max_bad_fraction``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ift
from ift.builtin_plugins.sources import JsonlSource

GOOD = json.dumps({"prompt": "p", "completion": "c"}).encode()


def source(tmp_path: Path, content: bytes, **config) -> JsonlSource:
    (tmp_path / "d.jsonl").write_bytes(content)
    return JsonlSource(JsonlSource.Config(path="d.jsonl", **config), source_name="d", base_dir=tmp_path)


@pytest.mark.parametrize(
    "content, line, message",
    [
        (GOOD + b"\n" + b'{"prompt": "p", "compl', 2, "invalid JSON: Unterminated string"),
        (GOOD + b"\n[1, 2]\n", 2, "expected a JSON object, got list"),
        (GOOD + b"\n" + b'{"prompt": "caf\xe9", "completion": "c"}\n', 2, "invalid UTF-8 (byte column 16)"),
        (GOOD + b"\n\n\n" + json.dumps({"prompt": "p"}).encode() + b"\n", 4, "missing field 'completion'"),
        (
            GOOD
            + b"\n"
            + json.dumps(
                {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "u"}]}
            ).encode(),
            2,
            "the last turn must be the assistant's answer",
        ),
        (GOOD + b"\n" + json.dumps({"prompt": 3, "completion": "c"}).encode(), 2, "field 'prompt' must be a string"),
    ],
)
def test_bad_rows_are_errors_naming_file_and_line(tmp_path: Path, content: bytes, line: int, message: str):
    with pytest.raises(ift.DataError) as err:
        list(source(tmp_path, content).records())
    assert str(err.value).startswith(f"{tmp_path / 'd.jsonl'}:{line}: {message}")


def test_bom_crlf_blank_lines_and_a_huge_line_are_fine(tmp_path: Path):
    huge = json.dumps({"prompt": "x" * 2_000_000, "completion": "y"}).encode()
    content = b"\xef\xbb\xbf" + GOOD + b"\r\n\r\n" + huge + b"\r\n" + GOOD
    records = list(source(tmp_path, content).records())
    assert [len(r.messages[0].content) for r in records] == [1, 2_000_000, 1]
    assert records[0].answer == "c"  # no stray \r


def test_skip_counts_bad_rows_by_reason_within_the_bound(tmp_path: Path):
    lines = [GOOD] * 97 + [b"{oops", b"[]", json.dumps({"prompt": "p"}).encode()]
    src = source(tmp_path, b"\n".join(lines), on_bad_rows="skip", max_bad_fraction=0.05)
    assert len(list(src.records())) == 97
    assert src.stats == {"skipped_rows": {"invalid JSON": 1, "not a JSON object": 1, "row does not fit the format": 1}}


def test_skip_beyond_max_bad_fraction_is_an_error(tmp_path: Path):
    lines = [GOOD] * 10 + [b"{oops"] * 2
    with pytest.raises(ift.DataError, match=r"2 bad rows of 12 exceed max_bad_fraction = 0.1"):
        list(source(tmp_path, b"\n".join(lines), on_bad_rows="skip", max_bad_fraction=0.1).records())
