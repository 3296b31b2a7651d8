"""Where a run's memory goes: ``python rss_phases.py SPEC.json`` runs the ift child of ``run.py`` (the same
spec.json a benchmark run leaves in its folder) and prints the peak resident memory of each phase.

A thread samples ``/proc/self/statm`` every 20 ms; the phase changes at ift's progress stages (preparing
data, loading model, training, ...), and inside training at each forward of the model, each backward
(the first gradient hook that fires) and each optimizer step. Per phase: RSS at its start, its peak, and
the growth. Diagnostic only: the numbers of record come from ``run.py``'s probe.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from probe import current_rss_mb  # noqa: E402


class Phases:
    def __init__(self) -> None:
        self.name = "imports"
        self.rows: list[dict[str, Any]] = []
        self._start(self.name)
        self._stop = False
        threading.Thread(target=self._sample, daemon=True).start()

    def _start(self, name: str) -> None:
        rss = current_rss_mb() or 0.0
        self.rows.append({"phase": name, "start_mb": rss, "peak_mb": rss, "t": time.perf_counter()})

    def enter(self, name: str) -> None:
        self._tick()
        self._start(name)

    def _tick(self) -> None:
        rss = current_rss_mb() or 0.0
        row = self.rows[-1]
        row["peak_mb"] = max(row["peak_mb"], rss)

    def _sample(self) -> None:
        while not self._stop:
            self._tick()
            time.sleep(0.02)

    def report(self) -> str:
        self._tick()
        lines = ["| phase | RSS at start MB | peak MB | growth MB |", "|---|---|---|---|"]
        for row in self.rows:
            lines.append(
                f"| {row['phase']} | {row['start_mb']:.0f} | {row['peak_mb']:.0f} | "
                f"{row['peak_mb'] - row['start_mb']:+.0f} |"
            )
        return "\n".join(lines)


def main() -> int:
    phases = Phases()
    import child_ift
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    import ift.cli
    from ift.progress import Progress

    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(spec["work_dir"]) / "phases"
    out.mkdir(parents=True, exist_ok=True)
    spec["work_dir"] = str(out)
    recipe = out / "recipe.toml"
    recipe.write_text(child_ift.recipe_text(spec))
    original_stage = Progress.stage

    def stage(self: Any, name: str) -> None:
        phases.enter(name)
        original_stage(self, name)

    Progress.stage = stage  # type: ignore[method-assign]
    step = {"n": 0}
    from transformers import PreTrainedModel

    original_call = torch.nn.Module.__call__

    def call(module: Any, *args: Any, **kwargs: Any) -> Any:
        if (
            isinstance(module, PreTrainedModel)
            and module.training
            and torch.is_grad_enabled()
            and not getattr(call, "inside", False)
        ):
            phases.enter(f"step {step['n'] + 1} forward")
            call.inside = True  # type: ignore[attr-defined]
            try:
                result = original_call(module, *args, **kwargs)
            finally:
                call.inside = False  # type: ignore[attr-defined]
            phases.enter(f"step {step['n'] + 1} after forward (loss, backward)")
            return result
        return original_call(module, *args, **kwargs)

    torch.nn.Module.__call__ = call  # type: ignore[method-assign]
    register_optimizer_step_pre_hook(lambda *a: phases.enter(f"step {step['n'] + 1} optimizer"))

    def stepped(*a: Any) -> None:
        step["n"] += 1
        phases.enter(f"after step {step['n']}")

    register_optimizer_step_post_hook(stepped)
    phases.enter("ift run starts")
    code = ift.cli.main(["run", str(recipe), "-o", str(out / "run"), "--overwrite"])
    phases.enter("end")
    print(phases.report())
    return code


if __name__ == "__main__":
    sys.exit(main())
