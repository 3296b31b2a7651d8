"""Public helpers on the component base classes."""

from __future__ import annotations

from pathlib import Path

import pytest

import ift
from ift.host import PluginHost


class RowsConfig(ift.ComponentConfig):
    rows: dict


class Wrapper(ift.InstructionSource):
    name = "wrapper"
    Config = RowsConfig

    def records(self):
        yield from self.open_nested(self.config.rows, "data[0].rows").records()


def test_open_nested_reads_another_source_through_the_host(host: PluginHost, tmp_path: Path):
    (tmp_path / "rows.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
    source = Wrapper(
        RowsConfig(rows={"source": "jsonl", "path": "rows.jsonl"}), source_name="w", base_dir=tmp_path, host=host
    )
    records = list(source.records())
    assert [(r.source, r.messages[0].content, r.answer) for r in records] == [("w", "p", "c")]


def test_open_nested_errors_name_the_nested_key(host: PluginHost, tmp_path: Path):
    bad_name = Wrapper(RowsConfig(rows={"source": "jsnl", "path": "x"}), source_name="w", base_dir=tmp_path, host=host)
    with pytest.raises(ift.RecipeError, match=r"data\[0\]\.rows\.source: unknown source 'jsnl' \(did you mean 'jsonl'"):
        list(bad_name.records())
    bad_key = Wrapper(RowsConfig(rows={"source": "jsonl", "pth": "x"}), source_name="w", base_dir=tmp_path, host=host)
    with pytest.raises(ift.RecipeError, match=r"data\[0\]\.rows\.pth"):
        list(bad_key.records())
