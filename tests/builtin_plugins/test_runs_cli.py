"""``ift runs`` and ``ift compare`` on hand-made run directories with known numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ift.builtin_plugins.reporting.rundata import better, lower_is_better
from ift.cli import main


def make_run(folder: Path, status: str, started: float, metrics: dict | None = None, **extra: object) -> Path:
    folder.mkdir(parents=True)
    (folder / "status.json").write_text(json.dumps({"status": status, "started": started, **extra}))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def metrics(loss: float, em: float, a_em: float, steps: int, tps: float) -> dict:
    return {
        "baseline": {
            "overall": {"loss": 3.0, "exact_match": 0.0, "n": 10},
            "per_source": {"a": {"loss": 3.0, "exact_match": 0.0, "n": 10}},
        },
        "final": {
            "overall": {"loss": loss, "exact_match": em, "n": 10},
            "per_source": {"a": {"loss": loss, "exact_match": a_em, "n": 10}},
        },
        "train": {"steps": steps, "train_loss": loss + 0.1, "tokens_per_s": tps},
    }


@pytest.fixture
def runs_folder(tmp_path: Path) -> Path:
    make_run(tmp_path / "runs" / "alpha", "completed", 1000.0, metrics(1.5, 0.25, 0.25, 100, 2000.0))
    make_run(tmp_path / "runs" / "beta", "completed", 2000.0, metrics(1.25, 0.5, 0.125, 200, 1000.0))
    make_run(tmp_path / "runs" / "gamma", "failed", 3000.0, error="RunError: out of memory")
    (tmp_path / "runs" / "not-a-run").mkdir()
    return tmp_path / "runs"


def test_runs_lists_status_steps_and_headline(runs_folder: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["runs", str(runs_folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "status", "started", "steps", "metric", "baseline", "final"]
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["alpha", "beta", "gamma"]  # oldest first; not-a-run left out
    assert rows[0][1] == "completed" and rows[0][-4:] == ["100", "loss", "3.0000", "1.5000"]
    assert rows[1][-4:] == ["200", "loss", "3.0000", "1.2500"]
    assert rows[2][1] == "failed" and rows[2][-4:] == ["-", "-", "-", "-"]
    assert len({len(line.rstrip()) for line in lines[:2]}) == 1  # header and rule line up


def test_runs_json(runs_folder: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["runs", str(runs_folder), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["status"], r["steps"], r["metric"], r["baseline"], r["final"]) for r in rows] == [
        ("alpha", "completed", 100, "loss", 3.0, 1.5),
        ("beta", "completed", 200, "loss", 3.0, 1.25),
        ("gamma", "failed", None, None, None, None),
    ]
    assert rows[2]["error"] == "RunError: out of memory"


def test_runs_in_an_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["runs", str(tmp_path)]) == 0
    assert "no run directories" in capsys.readouterr().out


def test_compare_prints_differences_and_the_better_run(runs_folder: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["compare", str(runs_folder / "alpha"), str(runs_folder / "beta")]) == 0
    out = capsys.readouterr().out
    rows = {tuple(line.split()[:3]): line.split() for line in out.splitlines() if line.startswith(("overall", "a "))}
    assert rows[("overall", "final", "loss")][-3:] == ["-0.2500", "(-16.7%)", "B"]  # lower loss wins
    assert rows[("overall", "final", "exact_match")][-3:] == ["+0.2500", "(+100.0%)", "B"]
    assert rows[("a", "final", "exact_match")][-3:] == ["-0.1250", "(-50.0%)", "A"]  # higher is better
    assert rows[("overall", "baseline", "loss")][-1] == "same"
    train = {line.split()[1]: line.split() for line in out.splitlines() if line.startswith("train")}
    assert train["tokens_per_s"][-1] == "A" and train["train_loss"][-1] == "B"
    assert train["steps"][-2:] == ["+100", "(+100.0%)"]  # no direction: no winner


def test_compare_json(runs_folder: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["compare", str(runs_folder / "alpha"), str(runs_folder / "beta"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    row = next(r for r in rows if (r["scope"], r["stage"], r["metric"]) == ("a", "final", "loss"))
    assert row == {
        "scope": "a",
        "stage": "final",
        "metric": "loss",
        "a": 1.5,
        "b": 1.25,
        "difference": -0.25,
        "better": "b",
    }


def test_metric_direction():
    assert lower_is_better("loss") and lower_is_better("perplexity") and lower_is_better("eval_loss")
    assert lower_is_better("rouge_l") is False and lower_is_better("n") is None
    assert better("exact_match", 0.1, 0.2) == "b" and better("perplexity", 5.0, 9.0) == "a"
    assert better("accuracy", None, 0.5) == ""


def test_compare_notes_metrics_computed_with_other_options(runs_folder: Path, capsys: pytest.CaptureFixture[str]):
    def manifest(run: str, normalize: bool) -> None:
        (runs_folder / run / "manifest.json").write_text(
            json.dumps(
                {
                    "metrics": {
                        "loss": {"options": {}, "plugin": "metrics", "distribution": "ift", "version": "0.1.0"},
                        "exact_match": {
                            "options": {"normalize": normalize},
                            "plugin": "metrics",
                            "distribution": "ift",
                            "version": "0.1.0",
                        },
                    }
                }
            )
        )

    manifest("alpha", True)
    manifest("beta", False)
    assert main(["compare", str(runs_folder / "alpha"), str(runs_folder / "beta")]) == 0
    out = capsys.readouterr().out
    assert "note: exact_match was computed with other options: A {normalize = True}, B {normalize = False}" in out
    assert "note: loss" not in out
    assert main(["compare", str(runs_folder / "alpha"), str(runs_folder / "beta"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["notes"] == [
        "exact_match was computed with other options: A {normalize = True}, B {normalize = False}"
    ]
    manifest("beta", True)
    assert main(["compare", str(runs_folder / "alpha"), str(runs_folder / "beta")]) == 0
    assert "note:" not in capsys.readouterr().out
