"""Peak RSS and tokens/s of ift on a real pretrained model folder, with its defaults, with checkpointing
asked for, with checkpointing and token-budget passes switched off, and with LoRA:
``python examples/benchmarks/real_memory.py --model-dir DIR`` (a SmolLM2 folder: ``smollm2_folder.py``). Each
configuration runs in a fresh process through ``child_ift.py`` (the ``ift run`` code path, measured by
``probe.py``), in rounds A B C A B C.

The data are seeded prompt/completion rows of English words (``workload.WORDS``), 370-600 words per example,
so every example is cut at max_length 512 with the real tokenizer and every batch holds 8 x 512 tokens: the
worst case of that batch shape, a memory workload, not real instruction text.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from workload import VERBS, WORDS, write_jsonl  # noqa: E402

LORA = (
    '[model.peft]\nmethod = "lora"\nr = 16\ntarget_modules = ["q_proj", "k_proj", "v_proj", '
    '"o_proj", "gate_proj", "up_proj", "down_proj"]'
)
CONFIGS = {
    "defaults": ("", ""),
    "gradient_checkpointing = true": ("", "gradient_checkpointing = true"),
    "no checkpointing": ("", "gradient_checkpointing = false"),
    "one pass, no checkpointing (before)": ("", 'max_tokens_per_forward = "none"\ngradient_checkpointing = false'),
    "lora r=16": (LORA, ""),
    "lora r=16, no checkpointing": (LORA, "gradient_checkpointing = false"),
}


def rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 100)))
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(350, 500)))
        out.append({"prompt": f"{rng.choice(VERBS)} #{i}: {prompt}\n", "completion": answer})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--work-dir", type=Path, default=HERE / ".work-real")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batching", default="auto")
    p.add_argument("--only", default=None, help="comma-separated parts of configuration names")
    args = p.parse_args()
    from transformers import AutoTokenizer

    pad_id = AutoTokenizer.from_pretrained(args.model_dir).pad_token_id
    data = write_jsonl(rows(8 * args.steps + 64), args.work_dir / "data.jsonl")
    settings = {
        "seed": 42,
        "steps": args.steps,
        "learning_rate": 1e-5,
        "adam_betas": [0.9, 0.999],
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "batch_size": 8,
        "max_length": 512,
        "ift_batching": args.batching,
        "shuffle": True,
    }
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    wanted = args.only.split(",") if args.only else None
    results: dict[str, list[dict]] = {name: [] for name in CONFIGS if not wanted or any(w in name for w in wanted)}
    for r in range(args.rounds):
        for name in results:
            model_extra, trainer_extra = CONFIGS[name]
            work = args.work_dir / f"{''.join(c if c.isalnum() else '-' for c in name)}-{r}"
            spec = {
                "work_dir": str(work),
                "data_path": str(data),
                "model_dir": str(args.model_dir),
                "pad_id": pad_id,
                "warmup": 1,
                "settings": settings,
                "model_extra": model_extra,
                "trainer_extra": trainer_extra,
                "skip_data_report": True,
            }
            (work).mkdir(parents=True, exist_ok=True)
            (work / "spec.json").write_text(json.dumps(spec))
            subprocess.run(
                [sys.executable, str(HERE / "child_ift.py"), str(work / "spec.json"), str(work / "result.json")],
                check=True,
                env=env,
                stdout=subprocess.DEVNULL,
            )
            found = json.loads((work / "result.json").read_text())
            results[name].append(found)
            print(
                f"{name}: peak RSS {found['peak_rss_mb'] / 1024:.2f} GiB, {found['tokens_per_s']:.0f} real "
                f"tokens/s, losses {[round(x, 3) for x in found['losses']]}",
                flush=True,
            )
    for name, found in results.items():
        print(
            f"| {name} | {statistics.median(f['peak_rss_mb'] for f in found) / 1024:.2f} GiB | "
            f"{statistics.median(f['tokens_per_s'] for f in found):.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
