"""ift vs TRL's SFTTrainer, side by side: ``python examples/benchmarks/run.py`` (see README.md here).

1. Sets up (once) a separate virtual environment with TRL and this checkout of ift, so the main environment
   is not touched and both trainers run on the very same torch / transformers / accelerate / datasets.
2. Writes the seeded synthetic data and saves one seeded random Llama with the byte-level tokenizer.
3. Parity: both trainers, padding batches in data order, must compute the same per-step loss (1e-5
   relative) on the same batches (equal real, padded and trainable token counts per step). If not, it stops
   here and prints no speed figures.
4. For each comparison, runs ift (A) and TRL (B) alternately, A B A B ..., each in a fresh process, and
   reports the median of the per-pair ratios ift/TRL with min and max.

Its environment (``environment.py``) and its tables and targets (``tables.py``) are modules of their own; what
stays here (over 500 lines) is the comparison itself: the plans, one run, parity, the pairs and ``main``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import real_text  # noqa: E402
from environment import ensure_venv, git_state, machine, main_venv_versions, versions  # noqa: E402
from tables import real_targets, table, targets, update_readme  # noqa: E402
from workload import Settings, build_model_dir, make_rows, write_jsonl  # noqa: E402

DEFAULT_VENV = HERE / ".venv"  # git-ignored by the repository's ".venv/" rule

# (label, data, ift batching, TRL mode, settings overrides)
COMPARISONS: list[tuple[str, str, str, str, dict[str, Any]]] = [
    ("default vs default", "lognormal", "auto", "default", {}),
    ("padding vs padding", "lognormal", "padding", "default", {}),
    ("packing vs packing", "lognormal", "packing", "packing", {"packed_rows": True}),
    ("padding-free vs padding-free", "lognormal", "padding-free", "padding_free", {}),
    ("default vs default", "constant", "auto", "default", {}),
]
EXTENDED: list[tuple[str, str, str, str, dict[str, Any]]] = [
    ("length-grouped vs group_by_length", "lognormal", "length-grouped", "group_by_length", {}),
    ("packing vs packing", "constant", "packing", "packing", {"packed_rows": True}),
    ("default vs TRL out of the box", "lognormal", "auto", "default", {"extra": {"trl_out_of_the_box": True}}),
]
# --model-dir: a real pretrained model on real instruction text (real_text.py), full fine-tuning and LoRA
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
REAL_COMPARISONS: list[tuple[str, str, str, str, dict[str, Any]]] = [
    ("default vs default", "real", "auto", "default", {}),
    ("padding vs padding", "real", "padding", "default", {}),
    ("padding-free vs padding-free", "real", "padding-free", "padding_free", {}),
    # the same batches on both sides (few steps of randomly drawn batches differ in length, and attention
    # over one padding-free row grows with the square of its length)
    (
        "padding-free vs padding-free, data order",
        "real",
        "padding-free",
        "padding_free",
        {"shuffle": False, "pairs": 1},
    ),
    (
        "gradient checkpointing, default vs default",
        "real",
        "auto",
        "default",
        {"extra": {"gradient_checkpointing": True}, "pairs": 1},
    ),
    ("LoRA r=16, default vs default", "real", "auto", "default", {"extra": {"lora": LORA}, "pairs": 1}),
]
REAL_LEARNING_RATE = 2e-5  # a pretrained model: a fine-tuning rate, not the toy model's 1e-3
METRICS = ("tokens_per_s", "padding_fraction", "preprocess_s", "peak_rss_mb", "final_loss")
PARITY_RTOL = 1e-5


# --- one run -------------------------------------------------------------------------------------------


def real_model_dir(source: Path, path: Path) -> tuple[Path, int]:
    """A benchmark copy of a local model folder (weights linked, not copied) whose tokenizer has a pad token
    distinct from EOS, so the probe's count of real tokens (``input_ids != pad``) includes every EOS; both
    trainers load this copy. Returns the folder and the pad id."""
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    path.mkdir(parents=True, exist_ok=True)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        special = [t for t in tokenizer.all_special_tokens if t not in (tokenizer.eos_token, tokenizer.bos_token)]
        candidates = ([tokenizer.unk_token] if tokenizer.unk_token in special else []) + special
        if not candidates:
            raise SystemExit(
                f"{source}: the tokenizer's pad token is its EOS and it has no other special token to pad with"
            )
        tokenizer.pad_token = candidates[0]
    tokenizer.save_pretrained(str(path))
    config = AutoConfig.from_pretrained(str(source))
    config.pad_token_id = tokenizer.pad_token_id
    if hasattr(config, "quantization_config"):  # a folder converted from GGUF keeps this note; weights are fp32
        del config.quantization_config
    config.save_pretrained(str(path))
    for item in source.iterdir():
        if (
            item.suffix == ".safetensors"
            or item.name.endswith((".safetensors.index.json", ".bin"))
            or item.name == "generation_config.json"
        ):
            target = path / item.name
            if not target.exists():
                target.symlink_to(item.resolve())
    return path, int(tokenizer.pad_token_id)


class Runner:
    def __init__(
        self,
        work: Path,
        data: dict[str, Path],
        model_dir: Path,
        pad_id: int,
        warmup: int,
        precision: str,
        timeout: int,
        threads: int | None,
        skip_data_report: bool = False,
        nice: int = 0,
        ift_trainer: str = "",
    ) -> None:
        self.work, self.data, self.model_dir, self.pad_id = work, data, model_dir, pad_id
        self.warmup, self.precision, self.timeout, self.threads = warmup, precision, timeout, threads
        self.skip_data_report, self.nice, self.ift_trainer = skip_data_report, nice, ift_trainer
        self.count = 0

    def run(self, side: str, settings: Settings, tag: str) -> dict[str, Any]:
        self.count += 1
        folder = self.work / "runs" / f"{self.count:03d}-{tag}-{side}"
        folder.mkdir(parents=True)
        spec = {
            "settings": settings.to_json(),
            "data_path": str(self.data[settings.data]),
            "model_dir": str(self.model_dir),
            "pad_id": self.pad_id,
            "work_dir": str(folder),
            "warmup": self.warmup,
            "precision": self.precision,
            "skip_data_report": self.skip_data_report,
            "trainer_extra": self.ift_trainer if side == "ift" else "",
        }
        (folder / "spec.json").write_text(json.dumps(spec, indent=2))
        # Fresh caches per run: both sides read the JSONL through `datasets`, which caches on disk, and
        # ift caches prepared data; a cache hit on one side would not be the preprocessing being compared.
        env = dict(
            os.environ,
            HF_HOME=str(folder / "hf"),
            HF_DATASETS_CACHE=str(folder / "hf" / "datasets"),
            IFT_CACHE_DIR=str(folder / "ift-cache"),
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            PYTHONUNBUFFERED="1",
            # ift core and its builtin plugins only: a logger plugin installed in the environment
            # (wandb, ...) would add its own cost to ift's side, or fail without credentials
            IFT_DISABLE_ENTRY_POINTS="1",
        )
        if self.threads:
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        started = time.perf_counter()
        with (folder / "log.txt").open("w") as log:
            nice = ["nice", "-n", str(self.nice)] if self.nice else []
            proc = subprocess.run(
                [
                    *nice,
                    sys.executable,
                    str(HERE / f"child_{side}.py"),
                    str(folder / "spec.json"),
                    str(folder / "result.json"),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=self.timeout,
            )
        if proc.returncode != 0:
            tail = (folder / "log.txt").read_text()[-4000:]
            raise SystemExit(f"{side} run failed ({folder}):\n{tail}")
        result = json.loads((folder / "result.json").read_text())
        result["wall_s"] = time.perf_counter() - started
        losses = result["losses"]
        result["final_loss"] = statistics.fmean(losses[-5:]) if losses else None
        return result


# --- parity --------------------------------------------------------------------------------------------


def parity(
    runner: Runner,
    steps: int,
    batch_size: int,
    max_length: int,
    data: str = "lognormal",
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Padding batches, data order as given, both sides: same batches, same per-step loss."""
    settings = Settings(
        data=data,
        ift_batching="padding",
        trl_mode="default",
        steps=steps,
        batch_size=batch_size,
        max_length=max_length,
        shuffle=False,
        **(base or {}),
    )
    a = runner.run("ift", settings, "parity")
    b = runner.run("trl", settings, "parity")
    rows, ok = [], True
    for i in range(steps):
        la, lb = a["losses"][i], b["losses"][i]
        rel = abs(la - lb) / max(abs(lb), 1e-12)
        # The same examples in the same step: equal real and trainable tokens. Padded slots may differ: on
        # a CPU ift cuts a micro-batch into several forward passes ([trainer] max_tokens_per_forward), each
        # padded to its own longest example, while TRL pads the whole batch once.
        same_batch = (
            a["per_step_real"][i] == b["per_step_real"][i] and a["trainable_tokens"][i] == b["trainable_tokens"][i]
        )
        good = rel <= PARITY_RTOL and same_batch
        ok = ok and good
        rows.append(
            {
                "step": i + 1,
                "ift_loss": la,
                "trl_loss": lb,
                "rel_diff": rel,
                "real_tokens": [a["per_step_real"][i], b["per_step_real"][i]],
                "slots": [a["per_step_slots"][i], b["per_step_slots"][i]],
                "trainable_tokens": [a["trainable_tokens"][i], b["trainable_tokens"][i]],
                "ok": good,
            }
        )
    return {
        "passed": ok and len(a["losses"]) >= steps and len(b["losses"]) >= steps,
        "steps": rows,
        "rtol": PARITY_RTOL,
        "versions": {"ift": a["versions"], "trl": b["versions"]},
    }


def print_parity(report: dict[str, Any]) -> None:
    print(f"\nparity (padding batches in data order, per-step loss, rtol {report['rtol']:g}):")
    print("  step  ift loss          TRL loss          rel diff   real tokens  slots ift/TRL  trainable  ok")
    for r in report["steps"]:
        same = "=" if r["real_tokens"][0] == r["real_tokens"][1] else "!="
        print(
            f"  {r['step']:>4}  {r['ift_loss']:.10f}  {r['trl_loss']:.10f}  {r['rel_diff']:.2e}   "
            f"{r['real_tokens'][0]:>6} {same:<2}   {r['slots'][0]:>5}/{r['slots'][1]:<5}  "
            f"{r['trainable_tokens'][0]:>9}  "
            f"{'yes' if r['ok'] else 'NO'}"
        )


# --- comparisons ---------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def summarize(values: list[float | None]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def compare(
    runner: Runner,
    label: str,
    data: str,
    ift_batching: str,
    trl_mode: str,
    overrides: dict[str, Any],
    pairs: int,
    steps: int,
    batch_size: int,
    max_length: int,
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    overrides = {**(base or {}), **overrides}
    pairs = min(pairs, overrides.pop("pairs", pairs))  # rows measured mainly for memory: fewer pairs
    if overrides.pop("packed_rows", False):
        # A packed row holds ~max_length / mean length examples; a quarter of the batch size in rows keeps
        # the tokens per step close to the other modes'.
        batch_size = max(1, batch_size // 4)
    settings = Settings(
        data=data,
        ift_batching=ift_batching,
        trl_mode=trl_mode,
        steps=steps,
        batch_size=batch_size,
        max_length=max_length,
        **overrides,
    )
    extra = settings.extra
    tag = (
        f"{data}-{ift_batching}-{trl_mode}"
        + ("-ootb" if extra.get("trl_out_of_the_box") else "")
        + ("-gc" if extra.get("gradient_checkpointing") else "")
        + ("-lora" if extra.get("lora") else "")
        + ("" if settings.shuffle else "-ordered")
    )
    runs = []
    for i in range(pairs):
        a = runner.run("ift", settings, tag)
        b = runner.run("trl", settings, tag)
        runs.append((a, b))
        print(
            f"  pair {i + 1}/{pairs}: tokens/s ift {a['tokens_per_s']:.0f}  TRL {b['tokens_per_s']:.0f}  "
            f"(x{a['tokens_per_s'] / b['tokens_per_s']:.2f})",
            flush=True,
        )
    out: dict[str, Any] = {
        "label": label,
        "data": data,
        "ift_batching": ift_batching,
        "ift_resolved": runs[0][0]["reported"]["batching"],
        "trl_mode": trl_mode,
        "settings": settings.to_json(),
        "ratios": {},
        "ift": {},
        "trl": {},
    }
    for metric in METRICS:
        out["ratios"][metric] = summarize([ratio(a[metric], b[metric]) for a, b in runs])
        out["ift"][metric] = summarize([a[metric] for a, _ in runs])
        out["trl"][metric] = summarize([b[metric] for _, b in runs])
    # ift's own counters against the probe's count of the same tensors
    out["ift_counters_match"] = all(
        a["reported"]["tokens"] == a["real_tokens"]
        and abs(a["reported"]["padding_fraction"] - a["padding_fraction"]) < 1e-3
        for a, _ in runs
    )
    out["ift_data_prep_s"] = summarize([a["data_prep_s"] for a, _ in runs])
    out["trl_data_prep_s"] = summarize([b["data_prep_s"] for _, b in runs])
    out["rss_growth_mb"] = {
        "ift": summarize([a["rss_end_mb"] - a["rss_mid_mb"] for a, _ in runs]),
        "trl": summarize([b["rss_end_mb"] - b["rss_mid_mb"] for _, b in runs]),
    }
    out["trl_reported"] = runs[0][1]["reported"]
    out["pairs"] = [
        {
            "ift": {k: a[k] for k in (*METRICS, "data_prep_s", "wall_s")},
            "trl": {k: b[k] for k in (*METRICS, "data_prep_s", "wall_s")},
        }
        for a, b in runs
    ]
    return out


# --- main ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=3, help="A B pairs per comparison (default 3)")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per run (default 60)")
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of tokens/s (default 2)")
    p.add_argument(
        "--rows",
        type=int,
        default=None,
        help="rows per synthetic data set (default 3000); with --model-dir, at most this many real rows (default all)",
    )
    p.add_argument("--parity-steps", type=int, default=10, help="steps whose loss must agree (default 10)")
    p.add_argument("--batch-size", type=int, default=8, help="examples per batch (packing: a quarter, in rows)")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument(
        "--model-config",
        type=Path,
        default=None,
        help="JSON file of model config keys replacing the tiny Llama (e.g. a 0.5B-1B architecture "
        "for a GPU run); vocab size and special tokens come from the tokenizer",
    )
    p.add_argument(
        "--core",
        action="store_true",
        help="only the comparisons issue 5 asks for (leave out length-grouped vs group_by_length, "
        "packing on constant lengths, and TRL with its untouched defaults)",
    )
    p.add_argument(
        "--only",
        default=None,
        help="run only comparisons whose label contains this text; several texts separated by '|' (any of them), "
        "and a text starting with '^' matches the start of a label ('^default vs default': that row alone)",
    )
    p.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32", help="fp32 (CPU) or bf16 autocast on both sides (GPU)"
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="scratch folder (default examples/benchmarks/runs/<time>, git-ignored)",
    )
    p.add_argument("--update-readme", action="store_true", help="write the table into README.md")
    p.add_argument(
        "--skip-ift-data-report",
        action="store_true",
        help="diagnostic: ift without the data quality report it writes before training (what moving "
        "it off the data path would give); not for the README table",
    )
    p.add_argument(
        "--ift-trainer",
        action="append",
        default=[],
        metavar="LINE",
        help="diagnostic: a line added to ift's [trainer] table (TOML, e.g. 'gradient_checkpointing = false'; "
        "repeatable); not for the README table",
    )
    p.add_argument("--venv", type=Path, default=Path(os.environ.get("IFT_BENCH_VENV", DEFAULT_VENV)))
    p.add_argument("--no-venv", action="store_true", help="use the current interpreter (needs trl installed)")
    p.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="a local causal-LM folder (weights and tokenizer, e.g. from smollm2_folder.py): benchmark "
        "that model on real instruction text (real_text.py) instead of the tiny Llama on synthetic "
        "rows; full fine-tuning and LoRA rows, issue 13's targets. Suggested with it: --steps 8 "
        "--pairs 2 --max-length 512 --parity-steps 4",
    )
    p.add_argument("--nice", type=int, default=0, help="run every child under nice -n N (a shared machine)")
    p.add_argument("--timeout", type=int, default=None, help="seconds per run (default 600; 3600 with --model-dir)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads per run (default 1; 0 = torch's default). On a shared machine "
        "two threads make every small op wait for the other core, and timings swing 100x",
    )
    args = p.parse_args(argv)
    if args.rows is None and args.model_dir is None:
        args.rows = 3000
    return args


def selects(text: str, label: str) -> bool:
    """Whether ``--only`` text ``text`` picks the comparison ``label``."""
    return label.startswith(text[1:]) if text.startswith("^") else text in label


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.skip_ift_data_report and args.update_readme:
        raise SystemExit("--skip-ift-data-report measures a modified ift; it cannot --update-readme")
    if args.ift_trainer and args.update_readme:
        raise SystemExit("--ift-trainer changes ift's settings; it cannot --update-readme")
    if not args.no_venv and Path(sys.prefix).resolve() != args.venv.resolve():
        python = ensure_venv(args.venv)
        os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])
    started = time.perf_counter()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = args.work_dir or HERE / "runs" / stamp
    work.mkdir(parents=True, exist_ok=True)
    env = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        **machine(),
        "versions": versions(),
        "main_venv_versions": main_venv_versions(),
        "git": git_state(),
        "load_average_start": os.getloadavg(),
    }
    print(f"ift vs TRL {env['versions']['trl']} | {env['cpu']}, {env['cores']} cores | work dir {work}")
    print("versions (both sides run in this environment): " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    main_versions = env["main_venv_versions"]
    if main_versions and any(main_versions.get(k) != env["versions"].get(k) for k in main_versions):
        print(f"note: the project's .venv has different versions: {main_versions}")

    real = args.model_dir is not None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if real:
        rows = real_text.make_rows(args.rows)
        env["data"] = real_text.describe(rows)
        data = {"real": write_jsonl(rows, work / "real.jsonl")}
        model_dir, pad_id = real_model_dir(args.model_dir.resolve(), work / "model")
        base: dict[str, Any] = {"learning_rate": REAL_LEARNING_RATE}
    else:
        data = {
            kind: write_jsonl(make_rows(kind, args.rows), work / f"{kind}.jsonl") for kind in ("lognormal", "constant")
        }
        model_config = json.loads(args.model_config.read_text()) if args.model_config else None
        model_dir = build_model_dir(work / "model", model_config)
        pad_id = AutoTokenizer.from_pretrained(str(model_dir)).pad_token_id
        base = {}
    env["parameters"] = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(model_dir)).parameters())
    timeout = args.timeout or (3600 if real else 600)
    runner = Runner(
        work,
        data,
        model_dir,
        pad_id,
        args.warmup,
        args.precision,
        timeout,
        args.threads,
        args.skip_ift_data_report,
        args.nice,
        "\n".join(args.ift_trainer),
    )

    report = parity(runner, args.parity_steps, args.batch_size, args.max_length, "real" if real else "lognormal", base)
    print_parity(report)
    results_file = work / "results.json"
    if not report["passed"]:
        results_file.write_text(json.dumps({"environment": env, "parity": report}, indent=2))
        print(
            "\nparity FAILED: the two trainers do not compute the same loss on the same batches, so no speed "
            f"figure is printed. Details: {results_file}"
        )
        return 1
    print("parity passed: same batches, same loss on every checked step\n")

    plan = REAL_COMPARISONS if real else COMPARISONS + ([] if args.core else EXTENDED)
    if args.only:
        plan = [c for c in plan if any(selects(text, c[0]) for text in args.only.split("|"))]
    results = []
    for label, kind, ift_batching, trl_mode, overrides in plan:
        print(f"{label} ({kind}): ift batching={ift_batching}, TRL mode={trl_mode}", flush=True)
        results.append(
            compare(
                runner,
                label,
                kind,
                ift_batching,
                trl_mode,
                overrides,
                args.pairs,
                args.steps,
                args.batch_size,
                args.max_length,
                base,
            )
        )
    env["load_average_end"] = os.getloadavg()
    env["minutes"] = round((time.perf_counter() - started) / 60, 1)
    checks = real_targets(results) if real else targets(results)
    results_file.write_text(
        json.dumps(
            {
                "environment": env,
                "parity": report,
                "results": results,
                "targets": checks,
                "args": {k: str(v) for k, v in vars(args).items()},
            },
            indent=2,
        )
    )
    body = table(results)
    load = (
        ", ".join(f"{x:.1f}" for x in env["load_average_start"])
        + " → "
        + ", ".join(f"{x:.1f}" for x in env["load_average_end"])
    )
    header = (
        f"Measured {env['date'][:16].replace('T', ' ')} on {env['cpu']} ({env['cores']} cores"
        f"{', GPU ' + env['gpu'] if env['gpu'] else ', no GPU'}), Python {env['python']}; "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        + f"; ift checkout {env['git']}"
        + (
            f". Model: {args.model_dir.name} ({env['parameters']:,} parameters), learning rate "
            f"{REAL_LEARNING_RATE:g}; data: {env['data']}"
            if real
            else f". Model: {env['parameters']:,} parameters"
        )
        + f"; batch size {args.batch_size}, max length "
        f"{args.max_length}; {args.pairs} pairs per comparison, {args.steps} optimizer steps per run "
        f"({args.warmup} warm-up steps left out of tokens/s), "
        + ("" if real else f"{args.rows} rows per data set, ")
        + f"precision {args.precision}, "
        f"{args.threads or 'default'} torch thread(s) per run; "
        f"load average (1, 5, 15 min) {load}; {env['minutes']} minutes in all"
        + (f"; children under nice -n {args.nice}" if args.nice else "")
        + "."
        + (" DIAGNOSTIC: ift ran without its data quality report." if args.skip_ift_data_report else "")
        + (f" DIAGNOSTIC: ift's [trainer] had {'; '.join(args.ift_trainer)}." if args.ift_trainer else "")
    )
    target_lines = "\n".join(f"- {'met' if ok else 'NOT met'}: {name}: {value}" for name, ok, value in checks)
    block = (
        f"{header}\n\nParity: {len(report['steps'])} steps, largest relative loss difference "
        f"{max(r['rel_diff'] for r in report['steps']):.1e} (limit {PARITY_RTOL:g}), identical real and "
        f"trainable token counts per step (padded slots may differ: ift's passes pad on their own).\n\n"
        f"Median of per-pair ratios ift/TRL (min–max):\n\n{body}\n\n"
        f"Targets:\n\n{target_lines}"
    )
    print("\n" + block)
    (work / "results.md").write_text(block + "\n")
    if args.update_readme:
        update_readme(block, "real-results" if real else "results")
    print(f"\nresults: {results_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
