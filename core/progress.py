"""What a run shows while it works: a live view on a terminal, plain log lines otherwise (CI, log files).

The live view (rich) keeps one line at the bottom of the terminal: the stage, a bar with step / total, the
last logged loss, learning rate and tokens/s, and the time left; evaluation results and messages are printed
above it as they arrive, so they stay in the scroll-back. Without a terminal the same facts come as one plain
line per logged step and per evaluation, with no control characters.

In a Jupyter notebook (or Colab) the terminal view is never used, whatever the stream claims: the steps go to a
notebook progress bar (``tqdm.notebook``) when ``ipywidgets`` is installed, and come as the same plain lines
otherwise, so a cell's output never fills with carriage returns or escape codes.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_eval(stage: str, result: dict[str, Any]) -> str:
    """``eval step-100: loss 1.2345  exact_match 0.4000  (n=20)`` from an evaluator's result."""
    overall = result.get("overall", {})
    parts = [
        f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}"
        for name, value in overall.items()
        if name != "n" and value is not None
    ]
    missing = [name for name, value in overall.items() if value is None]
    if missing:
        parts.append(f"({', '.join(missing)}: undefined)")
    if "n" in overall:
        parts.append(f"(n={overall['n']})")
    return f"eval {stage}: " + "  ".join(parts)


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (Jupyter, JupyterLab, VS Code notebooks, Colab)."""
    if "IPython" not in sys.modules:  # a kernel has imported IPython long before any run starts
        return False
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython half-installed
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def notebook_bar() -> Any:
    """``tqdm.notebook.tqdm`` when the widgets it draws with are installed, else None (plain lines are used)."""
    try:
        import ipywidgets  # noqa: F401  (tqdm.notebook falls back to printing text bars without it)
        from tqdm.notebook import tqdm
    except ImportError:
        return None
    return tqdm


class Progress:
    """Shows the run's stage, steps, loss, learning rate, tokens/s, ETA and eval results.

    ``interactive=None`` decides from the stream (a terminal gets the live view). ``notebook=None`` decides
    from the process (see :func:`in_notebook`): a notebook gets a widget bar, or plain lines, never the terminal
    view. ``enabled=False`` (the non-main processes of a distributed run) shows nothing.
    """

    def __init__(
        self,
        total: int = 0,
        *,
        stream: TextIO | None = None,
        interactive: bool | None = None,
        enabled: bool = True,
        notebook: bool | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.notebook = in_notebook() if notebook is None else notebook
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)()) if interactive is None else interactive
        if self.notebook:
            self.interactive = False
        self._bar: Any = None  # the notebook widget bar, when there is one
        self._total = total
        self._stage = "starting"
        self._step = 0
        self._first: tuple[int, float] | None = None  # (step, time) when stepping started: for the ETA
        self._stats = ""
        self._live: Any = None
        self._task: Any = None
        if enabled and self.interactive:
            self._start_live()
        elif enabled and self.notebook and (bar := notebook_bar()) is not None:
            self._bar = bar(total=total or None, desc=self._stage, unit="step", leave=True)

    # --- state ----------------------------------------------------------------------------------

    @property
    def total(self) -> int:
        return self._total

    @total.setter
    def total(self, value: int) -> None:
        self._total = value
        self._refresh()

    def stage(self, name: str) -> None:
        """Name what the run is doing now ("preparing data", "training", "evaluating step-100", ...)."""
        if not self.enabled or name == self._stage:
            return
        self._stage = name
        if self._live is None and self._bar is None:
            self._print(f"[{name}]")
        self._refresh()

    def step(self, step: int, event: dict[str, Any] | None = None) -> None:
        """Advance to ``step``; ``event`` is a logged step (loss, learning_rate, tokens_per_s)."""
        if not self.enabled:
            return
        if self._first is None:
            self._first = (step - 1 if step > 0 else 0, time.perf_counter())
        self._step = step
        if event:
            self._stats = (
                f"loss {event['loss']:.4f}  lr {event['learning_rate']:.2e}  {event['tokens_per_s']:,.0f} tok/s"
            )
            if self._live is None and self._bar is None:
                self._print(f"step {step}/{self._total}  {self._stats}  eta {self.eta()}")
        self._refresh()

    def eta(self) -> str:
        """Time left at the pace of the steps taken so far in this process (a resume starts a new pace)."""
        if self._first is None or not self._total or self._step <= self._first[0]:
            return "?"
        first_step, started = self._first
        per_step = (time.perf_counter() - started) / (self._step - first_step)
        return format_duration(per_step * max(self._total - self._step, 0))

    def evaluation(self, stage: str, result: dict[str, Any]) -> None:
        """Print an evaluation's overall results as soon as they are known."""
        if self.enabled and result:
            self._print(format_eval(stage, result))

    def write(self, message: str) -> None:
        if self.enabled:
            self._print(message)

    def close(self) -> None:
        if self._bar is not None:
            self._refresh()
            self._bar.close()
            self._bar = None
        if self._live is not None:
            self._refresh()
            self._live.stop()
            self._live = None

    # --- output ---------------------------------------------------------------------------------

    def _print(self, message: str) -> None:
        if self._live is not None:
            self._live.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=self.stream, flush=True)

    def _start_live(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn
        from rich.progress import Progress as RichProgress

        console = Console(file=self.stream, force_terminal=True)
        self._live = RichProgress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[stage]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TextColumn("eta {task.fields[eta]}"),
            console=console,
            transient=False,
            refresh_per_second=4,
            redirect_stdout=True,
            redirect_stderr=False,
        )
        self._task = self._live.add_task("run", total=self._total or None, stage=self._stage, stats="", eta="?")
        self._live.start()

    def _refresh(self) -> None:
        if self._bar is not None:
            if (self._total or None) != self._bar.total:  # the widget's length is only set through reset()
                self._bar.reset(total=self._total or None)
            self._bar.n = self._step
            self._bar.set_description(self._stage, refresh=False)
            self._bar.set_postfix_str(f"{self._stats}  eta {self.eta()}" if self._stats else "", refresh=False)
            self._bar.refresh()
        if self._live is not None:
            self._live.update(
                self._task,
                total=self._total or None,
                completed=self._step,
                stage=self._stage,
                stats=self._stats,
                eta=self.eta(),
            )
