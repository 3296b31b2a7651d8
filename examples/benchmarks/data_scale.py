"""Benchmark: how ``ift run``'s data path scales with the number of records (issue 13, item 6).

    python examples/benchmarks/data_scale.py [--records 20000 100000] [--repeat 1] [--seed 0] [--tokenizer T]
                                             [--workdir DIR] [--keep]

For each record count it writes seeded alpaca rows of realistic length (30 to 250 words, about 900 bytes of
JSON each) to a JSONL file, then runs ``ift run`` on them in a fresh process with the byte-level tokenizer (or
``--tokenizer metaspace``: a SentencePiece-style one trained on the rows; or a tokenizer folder), a
tiny Llama (training costs nothing), ``run.cache = false`` and one training step, and prints:

- ``wall s``: the whole command, process start to exit;
- ``prepare s``: reading, cleaning, splitting, rendering and tokenizing (``manifest.json`` ``cache.seconds``);
  the rest of ``wall s`` is imports, the model, one step, the data files and the data report, saving;
- ``peak RSS``: the child process's peak resident memory (``getrusage``), the more reliable figure on a shared
  machine;
- with two or more counts, the slope between the smallest and the largest: seconds and KB per record.

The rows depend only on ``--seed`` and the count (a smaller count is a prefix of a larger one), so two
checkouts measure the same data. Files go to ``--workdir`` (default: a temporary folder, removed afterwards
unless ``--keep``); a JSONL file already there with the right name is reused. No network, no torch in this
process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "the of and to in is that for it as with was on be by this are or from at an have not which but they "
    "you we can all their one has more been if will there when would so what about out up into them some "
    "time year people way day thing world life school state family student group country problem hand part "
    "place case week company system program question work government number night point home water room "
    "mother area money story fact month right study book eye job word business issue side kind head house "
    "service friend father power hour game line end member law car city community name president team "
    "minute idea body information back parent face level office door health person art war history party "
    "result change morning reason research moment air teacher force education temperature photosynthesis "
    "algorithm customer recommendation summary paragraph sentence translate explain describe important "
    "different example following because through between another however especially environment "
    "development experience performance relationship understanding technology organization"
).split()
VERBS = (
    "Write Explain Summarize List Describe Translate Classify Give Suggest Compare Rewrite Generate Create "
    "Identify Outline"
).split()


def alpaca_row(rng: random.Random, i: int) -> dict[str, str]:
    """One row: a 6-25 word instruction, an input in 40% of rows (10-60 words), an answer of 14-200 words;
    30 to 250 words in all."""

    def text(n: int) -> str:
        return " ".join(rng.choices(WORDS, k=n))

    total = rng.randint(30, 250)
    n_instruction = rng.randint(6, min(25, total - 14))
    n_input = rng.randint(10, 60) if rng.random() < 0.4 else 0
    n_input = max(0, min(n_input, total - n_instruction - 14))
    n_output = total - n_instruction - n_input
    return {
        "instruction": f"{rng.choice(VERBS)} {text(n_instruction - 1)} (item {i}).",
        "input": text(n_input) if n_input else "",
        "output": text(n_output).capitalize() + ".",
    }


def metaspace_tokenizer(folder: Path, seed: int, rows: int = 20_000) -> Path:
    """A SentencePiece-style tokenizer in ``folder`` (made once): BPE with a ``Metaspace`` pre-tokenizer and byte
    fallback, as the Llama 2 / Mistral conversions have, trained with ``tokenizers`` on ``rows`` of these rows
    (2026-12-07: 21,542 tokens, about 143 per row). Its token spans come from the tokenizer's offsets."""
    if (folder / "tokenizer.json").is_file():
        return folder
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    texts = [" ".join(alpaca_row(rng, i).values()) for i in range(rows)]
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    special = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=32_000, special_tokens=special, show_progress=False))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )
    fast.save_pretrained(str(folder))
    return folder


def write_rows(path: Path, n: int, seed: int) -> None:
    if path.is_file():
        return
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for i in range(n):
            handle.write(json.dumps(alpaca_row(rng, i)) + "\n")
    os.replace(tmp, path)


RECIPE = """\
[run]
name = "data-scale"
seed = 0
cache = false

[[data]]
source = "jsonl"
path = "{data}"
format = "alpaca"

[[transforms]]
name = "drop-invalid"

[[transforms]]
name = "dedup"

[template]
name = "alpaca"

[model]
adapter = "causal-lm"
tokenizer = {tokenizer}
from_config = {{ model_type = "llama", hidden_size = 32, intermediate_size = 64, num_hidden_layers = 1, \
num_attention_heads = 2, num_key_value_heads = 2, max_position_embeddings = 2048, tie_word_embeddings = true }}

[trainer]
name = "sft"
max_steps = 1
batch_size = 4
max_length = 2048

[eval]
fraction = 0.01
max_examples = 50
metrics = ["loss"]
"""


def run_once(workdir: Path, data: Path, n: int, attempt: int, tokenizer: str = "byte-level") -> dict[str, float]:
    recipe = workdir / f"recipe-{n}.toml"
    recipe.write_text(RECIPE.format(data=data.name, tokenizer=json.dumps(tokenizer)))
    out = workdir / f"run-{n}-{attempt}"
    shutil.rmtree(out, ignore_errors=True)
    env = {
        **os.environ,
        "IFT_NO_CACHE": "1",
        "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "true"),
    }
    log = workdir / f"run-{n}-{attempt}.log"
    started = time.perf_counter()
    with log.open("w") as handle:
        child = subprocess.Popen(
            [sys.executable, "-m", "ift", "run", str(recipe), "--output-dir", str(out)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
        )
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS
    wall = time.perf_counter() - started
    child.returncode = code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"ift run failed for {n} records (exit {code}):\n{log.read_text()[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    row = {
        "records": n,
        "wall_s": round(wall, 2),
        "prepare_s": manifest["cache"]["seconds"],
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "train_examples": manifest["data"]["encoding"]["train"]["out"],
    }
    shutil.rmtree(out, ignore_errors=True)
    log.unlink()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--repeat", type=int, default=1, help="runs per count (alternating counts)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the generated files in --workdir")
    parser.add_argument(
        "--tokenizer",
        default="byte-level",
        help="the recipe's [model] tokenizer: 'byte-level' (default), 'metaspace' (a SentencePiece-style tokenizer "
        "trained on these rows, see metaspace_tokenizer) or a tokenizer folder",
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ift-data-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.tokenizer == "metaspace":
        args.tokenizer = str(metaspace_tokenizer(workdir / f"metaspace-seed{args.seed}", args.seed))
    print(f"python {platform.python_version()} on {platform.platform()}, {os.cpu_count()} CPUs; workdir {workdir}")
    files = {}
    for n in args.records:
        files[n] = workdir / f"alpaca-{n}-seed{args.seed}.jsonl"
        began = time.perf_counter()
        write_rows(files[n], n, args.seed)
        size = files[n].stat().st_size
        print(
            f"{n:>9,} rows: {size / 2**20:.1f} MB ({size / n:.0f} bytes per row), "
            f"written in {time.perf_counter() - began:.1f} s"
        )
    rows = []
    try:
        for attempt in range(args.repeat):
            for n in args.records:
                row = run_once(workdir, files[n], n, attempt, args.tokenizer)
                rows.append(row)
                print(
                    f"{n:>9,} records: wall {row['wall_s']:7.1f} s, prepare {row['prepare_s']:7.1f} s, peak RSS "
                    f"{row['peak_rss_mb']:7.0f} MB  ({row['train_examples']:,} train examples)",
                    flush=True,
                )
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    counts = sorted(set(args.records))
    if len(counts) >= 2:

        def best(n: int, key: str) -> float:
            return min(r[key] for r in rows if r["records"] == n)

        lo, hi = counts[0], counts[-1]
        span = hi - lo
        print(
            f"slope {lo:,} -> {hi:,} records (best of {args.repeat}): "
            f"{(best(hi, 'wall_s') - best(lo, 'wall_s')) / span * 1e3:.3f} ms wall, "
            f"{(best(hi, 'prepare_s') - best(lo, 'prepare_s')) / span * 1e3:.3f} ms prepare, "
            f"{(best(hi, 'peak_rss_mb') - best(lo, 'peak_rss_mb')) / span * 1024:.2f} KB peak RSS per record"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
