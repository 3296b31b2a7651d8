"""One ift run in a fresh process: ``python child_ift.py SPEC.json RESULT.json``.

Builds a recipe from the spec, runs it through ``ift.cli.main(["run", ...])`` (the same code path as the
``ift run`` command), and writes what the probe measured plus what ift reported (events.jsonl,
metrics.json, manifest.json) to RESULT.json.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# The same heavy imports as the TRL child before the clock starts, so import time is not counted as
# preprocessing on one side only.
import accelerate  # noqa: E402, F401
import datasets  # noqa: E402, F401
import torch  # noqa: E402
import transformers  # noqa: E402, F401

import ift.cli  # noqa: E402
from ift.builtin_plugins import causal_lm, sft  # noqa: E402, F401

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe import Probe  # noqa: E402

HERE = Path(__file__).resolve().parent


LORA = """
[model.peft]
method = "lora"
r = {r}
alpha = {alpha}
dropout = {dropout}
target_modules = "all-linear"
"""


def recipe_text(spec: dict) -> str:
    s = spec["settings"]
    betas = ", ".join(str(b) for b in s["adam_betas"])
    extra = s.get("extra", {})
    model_extra = spec.get("model_extra", "")
    trainer_extra = spec.get("trainer_extra", "")
    if extra.get("lora"):  # the same LoRA as the TRL child's peft.LoraConfig
        model_extra += LORA.format(**extra["lora"])
    if extra.get("gradient_checkpointing"):
        trainer_extra += "\ngradient_checkpointing = true"
    return f"""\
[run]
name = "bench"
seed = {s["seed"]}
cache = false   # measure the first preparation, not a cache hit

[[data]]
source = "jsonl"
path = {json.dumps(spec["data_path"])}
format = "prompt-completion"

[template]
path = {json.dumps(str(HERE / "prompt_completion.jinja"))}

[model]
adapter = "causal-lm"
name_or_path = {json.dumps(spec["model_dir"])}
dtype = "float32"
{model_extra}

[trainer]
name = "sft"
max_steps = {s["steps"]}
learning_rate = {s["learning_rate"]}
adam_betas = [{betas}]
weight_decay = {s["weight_decay"]}
max_grad_norm = {s["max_grad_norm"]}
scheduler = "linear"
warmup_ratio = 0.0
gradient_accumulation_steps = 1
batch_size = {s["batch_size"]}
max_length = {s["max_length"]}
batching = "{s["ift_batching"]}"
shuffle = {str(s["shuffle"]).lower()}
precision = "{spec.get("precision", "fp32")}"
log_every = 1
{trainer_extra}

[eval]
fraction = 0.0
metrics = []
baseline = false
"""


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(spec["work_dir"])
    out.mkdir(parents=True, exist_ok=True)
    recipe = out / "recipe.toml"
    recipe.write_text(recipe_text(spec))
    run_dir = out / "run"
    if spec.get("skip_data_report"):
        # Diagnostic only (run.py --skip-ift-data-report): what ift's preprocessing costs without the data
        # quality report that the ift_data_prepared hook writes before training.
        from ift.host import PluginHost

        PluginHost.data_prepared = lambda self, *args, **kwargs: None  # type: ignore[method-assign]
    probe = Probe(spec["pad_id"])
    probe.install(spec["model_dir"])
    t_imported = time.perf_counter()
    t0 = time.perf_counter()  # raw rows are read from here on
    code = ift.cli.main(["run", str(recipe), "-o", str(run_dir), "--overwrite"])
    t_end = time.perf_counter()
    if code != 0:
        raise SystemExit(f"ift run failed with exit code {code}")
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    steps = [e for e in events if "step" in e and "loss" in e]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    result = {
        "side": "ift",
        "import_s": t_imported - T_START,
        "total_s": t_end - t0,
        "threads": torch.get_num_threads(),
        **probe.summary(t0, spec["warmup"]),
        "losses": [e["loss"] for e in steps],
        "trainable_tokens": [e["trainable_tokens"] for e in steps],
        "data_prep_s": manifest.get("cache", {}).get("seconds"),
        "reported": {
            k: metrics["train"].get(k)
            for k in (
                "batching",
                "tokens",
                "tokens_per_s",
                "padding_fraction",
                "data_wait_fraction",
                "peak_memory_mb",
                "train_seconds",
                "gradient_checkpointing",
                "max_tokens_per_forward",
            )
        },
        "versions": manifest.get("packages", {}) | {"ift": manifest.get("ift")},
    }
    Path(sys.argv[2]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
