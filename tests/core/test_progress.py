"""The run's progress display: plain lines off a terminal, a live view on one, a bar or lines in a notebook."""

from __future__ import annotations

import io
import re

from ift import progress as progress_module
from ift.progress import Progress, format_duration, format_eval

EVENT = {"loss": 1.23456, "learning_rate": 3e-4, "tokens_per_s": 1234.5}
RESULT = {"overall": {"loss": 0.5, "exact_match": 0.25, "n": 20}, "per_source": {}}


def test_plain_lines_show_step_loss_lr_tokens_and_eta() -> None:
    out = io.StringIO()
    progress = Progress(10, stream=out, interactive=False)
    progress.stage("training")
    progress.step(1)
    progress.step(5, EVENT)
    progress.evaluation("step-5", RESULT)
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[training]"
    assert re.fullmatch(r"step 5/10  loss 1\.2346  lr 3\.00e-04  1,234 tok/s  eta \d+:\d\d", lines[1])
    assert lines[2] == "eval step-5: loss 0.5000  exact_match 0.2500  (n=20)"
    assert "\x1b" not in out.getvalue()  # no control characters in logs


def test_eta_follows_the_pace_of_the_steps_taken() -> None:
    progress = Progress(100, stream=io.StringIO(), interactive=False)
    assert progress.eta() == "?"
    progress.step(10)
    progress._first = (0, progress._first[1] - 20.0)  # pretend 10 steps took 20 s: 90 steps left -> 180 s
    assert progress.eta() == "3:00"


def test_live_view_shows_stage_counts_stats_and_eval_lines() -> None:
    out = io.StringIO()
    progress = Progress(4, stream=out, interactive=True)
    progress.stage("training")
    progress.step(2, EVENT)
    progress.evaluation("step-2", RESULT)
    progress.write("a message")
    progress.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "training" in text and "2/4" in text and "loss 1.2346" in text and "1,234 tok/s" in text
    assert "eval step-2: loss 0.5000  exact_match 0.2500  (n=20)" in text
    assert "a message" in text


def test_disabled_progress_prints_nothing() -> None:
    out = io.StringIO()
    progress = Progress(3, stream=out, interactive=False, enabled=False)
    progress.stage("training")
    progress.step(1, EVENT)
    progress.evaluation("final", RESULT)
    progress.write("x")
    assert out.getvalue() == ""


def test_formatting_helpers() -> None:
    assert format_duration(3725) == "1:02:05"
    assert format_duration(65) == "1:05"
    assert format_eval("final", {"overall": {"bleu": None, "n": 3}}) == "eval final: (bleu: undefined)  (n=3)"


# --- notebooks ---------------------------------------------------------------------------------


class TtyStream(io.StringIO):
    """A stream that claims to be a terminal, as some notebook front ends' streams do."""

    def isatty(self) -> bool:
        return True


class FakeBar:
    """Records what Progress does to a tqdm.notebook bar."""

    made: list[FakeBar] = []

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "", leave: bool = True) -> None:
        self.total, self.desc, self.n, self.postfix, self.closed, self.resets = total, desc, 0, "", False, 0
        FakeBar.made.append(self)

    def reset(self, total: int | None = None) -> None:
        self.total, self.n = total, 0
        self.resets += 1

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_a_notebook_without_widgets_gets_plain_lines_even_from_a_terminal_like_stream(monkeypatch) -> None:
    monkeypatch.setattr(progress_module, "notebook_bar", lambda: None)
    out = TtyStream()
    progress = Progress(4, stream=out, notebook=True)
    assert not progress.interactive
    progress.stage("training")
    progress.step(2, EVENT)
    progress.evaluation("final", RESULT)
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[training]" and lines[1].startswith("step 2/4  loss 1.2346")
    assert lines[2] == "eval final: loss 0.5000  exact_match 0.2500  (n=20)"
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_a_notebook_with_widgets_gets_a_bar_and_lines_for_results(monkeypatch) -> None:
    FakeBar.made.clear()
    monkeypatch.setattr(progress_module, "notebook_bar", lambda: FakeBar)
    out = io.StringIO()
    progress = Progress(0, stream=out, notebook=True)
    progress.total = 10
    progress.stage("training")
    progress.step(3, EVENT)
    (bar,) = FakeBar.made
    assert (bar.total, bar.n, bar.desc, bar.resets) == (10, 3, "training", 1)
    assert bar.postfix.startswith("loss 1.2346  lr 3.00e-04  1,234 tok/s  eta ")
    progress.evaluation("step-3", RESULT)
    progress.write("a message")
    progress.close()
    assert bar.closed
    # steps and stages are the bar's; evaluations and messages stay in the cell's output as lines
    assert out.getvalue().splitlines() == ["eval step-3: loss 0.5000  exact_match 0.2500  (n=20)", "a message"]


def test_in_notebook_means_a_jupyter_kernel(monkeypatch) -> None:
    import sys
    import types

    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert not progress_module.in_notebook()
    fake = types.ModuleType("IPython")
    shell = types.SimpleNamespace(config={"IPKernelApp": {"connection_file": "kernel.json"}})
    fake.get_ipython = lambda: shell  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert progress_module.in_notebook()
    shell.config = {"TerminalInteractiveShell": {}}  # plain `ipython` in a terminal: the live view is fine there
    assert not progress_module.in_notebook()
    fake.get_ipython = lambda: None  # type: ignore[attr-defined]
    assert not progress_module.in_notebook()
