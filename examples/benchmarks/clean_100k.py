"""Benchmark: clean 100,000 short synthetic instruction records (seeded), with planted exact duplicates,
near-duplicates, invalid records, PII and eval overlaps, through the builtin cleaning chain.

    python examples/benchmarks/clean_100k.py [--records 100000] [--seed 0] [--method minhash|rouge-l]

Prints the time of each transform, what it dropped and changed, and whether the planted records were
found. Runs on the CPU; no network, no torch.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import sys
import time

import ift
from ift.builtin_plugins.cleaning import Decontaminate, LengthFilter, MaskPII, NearDedup, Tag
from ift.builtin_plugins.cleaning.minhash import jaccard, shingle_set
from ift.builtin_plugins.cleaning.text import conversation
from ift.builtin_plugins.transforms import DropInvalid, ExactDedup

VERBS = ["Write", "Explain", "Summarize", "List", "Describe", "Translate", "Classify", "Give", "Suggest", "Compare"]
TOPICS = [
    "the water cycle",
    "a budget for a student",
    "photosynthesis",
    "the French revolution",
    "a python list",
    "interest rates",
    "a healthy breakfast",
    "the rules of tennis",
    "machine learning",
    "a trip to Rome",
    "black holes",
    "a job interview",
    "climate change",
    "prime numbers",
    "a short poem about rain",
]
WORDS = (
    "time year people way day man thing woman life child world school state family student group country "
    "problem hand part place case week company system program question work government number night point "
    "home water room mother area money story fact month lot right study book eye job word business issue "
    "side kind head house service friend father power hour game line end member law car city community name "
    "president team minute idea kid body information back parent face others level office door health "
    "person art war history party result change morning reason research girl guy moment air teacher force "
    "education"
).split()


def make_records(n: int, seed: int) -> tuple[list[ift.InstructionRecord], dict[str, int], list[tuple[str, str]]]:
    """n training records plus 200 eval records. About 88% are unique; the rest are planted, each copied
    from a unique one: 4% exact duplicates (case and spacing changed), 4% near-duplicates (one word of the
    prompt added or replaced), 1% empty answers, 1% with an e-mail address, 1% copying an eval prompt, 1% with a
    400-word answer. Returns the records, the planted counts and the (near-duplicate, original) id pairs."""
    rng = random.Random(seed)
    planted = {"exact": 0, "near": 0, "invalid": 0, "pii": 0, "overlap": 0, "long": 0}
    near_pairs: list[tuple[str, str]] = []

    def make(rid: str, prompt: str, answer: str, split: str = "auto") -> ift.InstructionRecord:
        return ift.InstructionRecord(
            rid, "synthetic", [ift.Message("user", prompt), ift.Message("assistant", answer)], metadata={"split": split}
        )

    def sentence(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    evals = [
        make(f"eval-{i}", f"{rng.choice(VERBS)} {rng.choice(TOPICS)} for {sentence(14)}.", sentence(8), "eval")
        for i in range(200)
    ]
    records = list(evals)
    originals: list[ift.InstructionRecord] = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.04 and originals:
            src = rng.choice(originals)
            records.append(make(f"r{i}", "  " + src.messages[0].content.upper(), src.answer))
            planted["exact"] += 1
        elif roll < 0.08 and originals:
            src = rng.choice(originals)
            tokens = src.messages[0].content.split()
            if rng.random() < 0.5:
                tokens.insert(rng.randrange(1, len(tokens)), rng.choice(WORDS))
            else:
                tokens[rng.randrange(1, len(tokens))] = rng.choice(WORDS)
            records.append(make(f"r{i}", " ".join(tokens), src.answer))
            near_pairs.append((f"r{i}", src.id))
            planted["near"] += 1
        elif roll < 0.09:
            records.append(make(f"r{i}", f"{rng.choice(VERBS)} {sentence(6)}", " "))
            planted["invalid"] += 1
        elif roll < 0.10:
            records.append(make(f"r{i}", f"Email me at user{i}@example.com about {sentence(8)}", sentence(12)))
            planted["pii"] += 1
        elif roll < 0.11:
            records.append(make(f"r{i}", rng.choice(evals).messages[0].content, sentence(10)))
            planted["overlap"] += 1
        elif roll < 0.12:
            records.append(make(f"r{i}", f"{rng.choice(VERBS)} {sentence(8)}", sentence(400)))
            planted["long"] += 1
        else:
            record = make(
                f"r{i}",
                f"{rng.choice(VERBS)} {rng.choice(TOPICS)} {sentence(rng.randint(6, 14))}",
                sentence(rng.randint(8, 30)),
            )
            records.append(record)
            originals.append(record)
    return records, planted, near_pairs


def near_duplicate_recall(
    records: list[ift.InstructionRecord], kept_ids: set[str], pairs: list[tuple[str, str]], threshold: float
) -> str:
    """Of the planted near-duplicates whose exact Jaccard similarity (word 3-grams of the conversation) to
    their original reaches the threshold, how many near-dedup dropped."""
    text = {r.id: conversation(r) for r in records}
    due = [
        copy for copy, original in pairs if jaccard(shingle_set(text[copy]), shingle_set(text[original])) >= threshold
    ]
    found = sum(copy not in kept_ids for copy in due)
    return (
        f"planted near-duplicates at Jaccard >= {threshold}: {len(due)} of {len(pairs)}; "
        f"dropped {found} ({found / max(1, len(due)):.2%} recall)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", choices=["minhash", "rouge-l"], default="minhash", help="near-dedup method")
    args = parser.parse_args()
    started = time.perf_counter()
    records, planted, near_pairs = make_records(args.records, args.seed)
    generated = list(records)
    print(
        f"generated {len(records)} records ({args.records} + 200 eval) in {time.perf_counter() - started:.1f}s; "
        f"planted: {planted}"
    )
    chain = [
        DropInvalid(DropInvalid.Config()),
        ExactDedup(ExactDedup.Config()),
        NearDedup(NearDedup.Config(method=args.method)),
        LengthFilter(LengthFilter.Config(max_answer=300)),
        MaskPII(MaskPII.Config()),
        Tag(Tag.Config()),
        Decontaminate(Decontaminate.Config()),
    ]
    total = 0.0
    cpu_started = time.process_time()
    for transform in chain:
        tally = ift.Tally()
        before = len(records)
        t0 = time.perf_counter()
        records = transform.apply(records, tally)
        elapsed = time.perf_counter() - t0
        total += elapsed
        assert before - len(records) == sum(tally.dropped.values()), transform.name
        changed = dict(tally.changed) if transform.name != "tag" else f"{sum(tally.changed.values())} labels"
        print(
            f"{transform.name:>14}: {elapsed:6.2f}s  {before} -> {len(records)}  dropped {dict(tally.dropped)}  "
            f"changed {changed}"
        )
        if isinstance(transform, NearDedup) and args.method == "minhash":
            print(
                " " * 16
                + near_duplicate_recall(generated, {r.id for r in records}, near_pairs, transform.config.threshold)
            )
    cpu = time.process_time() - cpu_started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    print(
        f"total {total:.1f}s wall ({cpu:.1f}s CPU) for the chain; {len(records)} records left; peak memory "
        f"{peak:.0f} MiB ({platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()})"
    )


if __name__ == "__main__":
    main()
