"""The README's plugin example is real code: it runs from a recipe as a local plugin."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from ift.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(marker: str) -> str:
    for block in re.findall(r"```(?:python|toml|bash)\n(.*?)```", README.read_text(), flags=re.S):
        if marker in block:
            return block
    raise AssertionError(f"no README code block contains {marker!r}")


def test_readme_test_command_is_what_ci_runs():
    command = readme_block("python -m pytest").strip()
    ci = (README.parent / ".ci" / "run").read_text()
    assert command in ci.splitlines()


@pytest.mark.slow
def test_readme_plugin_example_runs(tmp_path: Path):
    (tmp_path / "my_plugin.py").write_text(readme_block("# my_plugin.py"))
    with sqlite3.connect(tmp_path / "tickets.db") as db:
        db.execute("create table faq (q text, a text)")
        db.executemany("insert into faq values (?, ?)", [(f"Echo {i}", str(i)) for i in range(20)])
    (tmp_path / "recipe.toml").write_text("""
[[data]]
source = "sqlite"
database = "tickets.db"
query = "select q, a from faq"

[model]
adapter = "causal-lm"
tokenizer = "byte-level"
from_config = { model_type = "llama", hidden_size = 32, intermediate_size = 64, num_hidden_layers = 1, num_attention_heads = 2 }

[trainer]
max_steps = 2
batch_size = 4

[eval]
fraction = 0.2
metrics = ["starts_with_answer"]
max_new_tokens = 2

[plugins]
local = ["my_plugin.py"]
""")
    assert main(["run", str(tmp_path / "recipe.toml"), "-o", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["final"]["overall"]["n"] == 4
    assert 0 <= metrics["final"]["overall"]["starts_with_answer"] <= 1
