"""report.html: written at the end of a completed run, self-contained, with the run's numbers; ``ift report``
rewrites it for any run directory, failed ones included."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ift.builtin_plugins.reporting import write_run_report
from ift.builtin_plugins.reporting.rundata import fmt
from ift.cli import main

ROWS = [
    {"id": f"{s}-{w}", "instruction": f"Uppercase: {w}", "input": "", "output": w.upper()}
    for s in ("a", "b")
    for w in ["abc", "dog", "cat", "xyz", "sun", "map", "red", "toy", "fig", "jam"]
]
TINY = (
    '{ model_type = "llama", hidden_size = 16, intermediate_size = 32, num_hidden_layers = 1, '
    "num_attention_heads = 2, num_key_value_heads = 2, max_position_embeddings = 64 }"
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    for source in ("a", "b"):
        rows = [r for r in ROWS if r["id"].startswith(source)]
        (tmp / f"{source}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "recipe.toml").write_text(f"""
[run]
name = "tiny"

[[data]]
source = "jsonl"
name = "first"
path = "a.jsonl"

[[data]]
source = "jsonl"
name = "second"
path = "b.jsonl"

[mixture]
strategy = "temperature"
temperature = 2.0

[template]
name = "alpaca"

[model]
adapter = "causal-lm"
tokenizer = "byte-level"
device = "cpu"
from_config = {TINY}

[trainer]
name = "sft"
max_steps = 4
batch_size = 4
log_every = 1
eval_every = 2
max_length = 64

[eval]
fraction = 0.2
metrics = ["loss", "exact_match"]
max_new_tokens = 3
samples = 2
""")
    out = tmp / "run"
    assert main(["run", str(tmp / "recipe.toml"), "--output-dir", str(out)]) == 0
    return out


def test_completed_run_has_a_report_with_its_numbers(run_dir: Path):
    html = (run_dir / "report.html").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for stage in ("baseline", "final"):
        for name, value in metrics[stage]["overall"].items():
            if name != "n":
                assert f">{fmt(value)}<" in html, (stage, name)
    for source in ("first", "second"):
        assert f"<td>{source}</td>" in html
    for sample in metrics["samples"]:
        assert sample["prompt"] in html
    assert "completed" in html and "Manifest" in html and "drop" in html


def test_report_shows_what_each_source_of_the_mixture_contributed(run_dir: Path):
    html = (run_dir / "report.html").read_text()
    mixture = json.loads((run_dir / "metrics.json").read_text())["data"]["mixture"]
    assert "Mixture: temperature, T = 2" in html
    for name in ("first", "second"):
        row = re.search(rf"<td>{name}</td>(.*?)</tr>", html.split("Mixture:")[1], re.S)
        assert row, name
        cells = re.findall(r"<td[^>]*>([^<]*)</td>", row.group(1))
        source = mixture["sources"][name]
        assert cells == [
            fmt(source["records"]),
            f"{source['target_share']:.3f}",
            fmt(source["examples"]),
            fmt(source["trainable_tokens"]),
            f"{source['trainable_token_share']:.3f}",
        ]


def test_report_is_self_contained(run_dir: Path):
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2  # training curves and eval metrics over steps
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert not re.search(r"<(script|link)\b", html)
    assert "url(" not in html and "@import" not in html


def test_report_command_rewrites_the_report(run_dir: Path, capsys: pytest.CaptureFixture[str]):
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").is_file()
    assert not list(run_dir.glob(".*.tmp"))
    assert str(run_dir / "report.html") in capsys.readouterr().out


def test_failed_run_report_shows_status_and_error(tmp_path: Path):
    (tmp_path / "status.json").write_text(
        json.dumps(
            {"status": "failed", "started": 1.0, "updated": 2.0, "error": "DataError: no training examples <left>"}
        )
    )
    (tmp_path / "events.jsonl").write_text('{"step": 1, "loss": 2.5, "learning_rate": 0.001}\n{"step": 2, "lo')
    html = write_run_report(tmp_path).read_text()
    assert "badge failed" in html and "no training examples &lt;left&gt;" in html
    assert "No final evaluation" in html and "data:image/png;base64," in html  # the curve of the logged step


def test_report_of_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["report", str(tmp_path)]) != 0
    assert "not a run directory" in capsys.readouterr().err
