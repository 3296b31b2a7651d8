"""near-dedup: MinHash + LSH candidates, verified exactly by Jaccard or ROUGE-L; never quadratic."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from pydantic import ValidationError

import ift
from ift.builtin_plugins.cleaning.minhash import (
    NearDuplicateFinder,
    band_layout,
    jaccard,
    lcs_length,
    rouge_l_f1,
    shingle_set,
    signatures,
    word_bag,
)
from ift.builtin_plugins.cleaning.neardup import NearDedup, NearDedupConfig
from ift.builtin_plugins.metrics import lcs_length as metric_lcs_length
from ift.builtin_plugins.transforms import DedupConfig, ExactDedup
from ift.records import normalize_row

DATA = Path(__file__).resolve().parents[1] / "data" / "cleaning"


def rec(rid: str, prompt: str, answer: str = "ok", split: str = "auto") -> ift.InstructionRecord:
    return ift.InstructionRecord(
        rid, "s", [ift.Message("user", prompt), ift.Message("assistant", answer)], metadata={"split": split}
    )


def near_dedup(records: list[ift.InstructionRecord], **config: object) -> tuple[list[str], dict[str, int]]:
    tally = ift.Tally()
    kept = NearDedup(NearDedupConfig(**config)).apply(records, tally)
    return [r.id for r in kept], dict(tally.dropped)


def test_shipped_set_loses_exactly_its_duplicates_and_near_duplicates() -> None:
    rows = [json.loads(line) for line in (DATA / "near_duplicates.jsonl").read_text().splitlines()]
    records = [ift.InstructionRecord(row["id"], "s", normalize_row(row)[0]) for row in rows]
    tally = ift.Tally()
    records = ExactDedup(DedupConfig()).apply(records, tally)
    assert dict(tally.dropped) == {"duplicate": 2}  # exact-of-1 (case, spacing), exact-of-3
    # word 3-gram Jaccard with their originals: near-of-2 22/25 = 0.88, near-of-5 27/34 = 0.79 (>= 0.7: dropped);
    # paraphrase-of-1 0/43 and other-4 3/29 (kept)
    kept, dropped = near_dedup(records)
    assert kept == ["orig-1", "orig-2", "orig-3", "orig-4", "orig-5", "paraphrase-of-1", "other-4"]
    assert dropped == {"near-duplicate": 2}


BASE = "the quick brown fox jumps over the lazy dog near the river bank today"


def test_minhash_threshold_keeps_a_pair_below_and_drops_one_above() -> None:
    above = BASE.replace("today", "tonight")  # last 3-gram differs: Jaccard 11/13 = 0.846
    below = BASE.replace("jumps", "leaps")  # three 3-grams differ: Jaccard 9/15 = 0.6
    assert jaccard(shingle_set(BASE), shingle_set(above)) == pytest.approx(11 / 13)
    assert jaccard(shingle_set(BASE), shingle_set(below)) == pytest.approx(9 / 15)
    records = [rec("base", BASE), rec("above", above, "x"), rec("below", below, "y")]
    assert near_dedup(records, by="prompt") == (["base", "below"], {"near-duplicate": 1})
    assert near_dedup(records, by="prompt", threshold=0.55) == (["base"], {"near-duplicate": 2})
    assert near_dedup(records, by="prompt", threshold=0.9) == (["base", "above", "below"], {})


POEM = "write a short poem about the sea and the sky"


def test_rouge_l_keeps_a_paraphrase_below_the_threshold_and_drops_one_above() -> None:
    above = "please write a poem about the sea and the night sky"  # LCS 9 of 10 and 11 words: F1 18/21 = 0.857
    below = "compose a brief verse describing the ocean and the sky"  # LCS 5 of 10 and 10 words: F1 0.5
    shuffled = "sky the and sea the about poem short a write"  # same words reversed: LCS 3, F1 0.3
    records = [rec("poem", POEM), rec("above", above), rec("below", below), rec("shuffled", shuffled)]
    assert near_dedup(records, by="prompt", method="rouge-l") == (["poem", "below", "shuffled"], {"near-duplicate": 1})
    assert near_dedup(records, by="prompt", method="rouge-l", threshold=0.9) == (
        ["poem", "above", "below", "shuffled"],
        {},
    )


def test_rouge_l_verifies_candidates_that_share_words_in_another_order() -> None:
    finder = NearDuplicateFinder(method="rouge-l", threshold=0.7)
    assert finder.find([POEM, "sky the and sea the about poem short a write"]) == [None, None]
    assert finder.candidates_checked == 1  # same word set: LSH proposes the pair, ROUGE-L rejects it
    # candidates come from word multisets at Jaccard t / (2 - t), the least a pair with ROUGE-L F1 t shares
    assert finder.set_threshold == pytest.approx(0.7 / 1.3)
    assert jaccard(word_bag("a a b"), word_bag("a b b")) == pytest.approx(2 / 4)


def test_eval_records_are_never_dropped_and_win_over_earlier_training_records() -> None:
    records = [
        rec("train", BASE),
        rec("eval", BASE.replace("today", "tonight"), split="eval"),
        rec("eval-2", BASE, split="eval"),
    ]
    assert near_dedup(records, by="prompt") == (["eval", "eval-2"], {"near-duplicate": 1})


def test_empty_texts_are_kept() -> None:
    assert NearDuplicateFinder().find(["", "", "!!"]) == [None, None, None]


def test_work_is_linear_candidates_stay_few_and_planted_copies_are_all_found() -> None:
    rng = random.Random(0)
    vocabulary = [f"w{i}" for i in range(500)]
    texts = [" ".join(rng.choice(vocabulary) for _ in range(20)) for _ in range(3000)]
    copies = [t.replace(t.split()[5], "changed", 1) for t in texts[:100]]  # one word of 20 changed
    finder = NearDuplicateFinder()
    result = finder.find(texts + copies)
    assert result[:3000] == [None] * 3000
    assert result[3000:] == list(range(100))
    assert finder.candidates_checked < 300  # an all-pairs search would make 4.7 million comparisons


def test_max_candidates_bounds_the_work_when_every_text_looks_alike() -> None:
    rng = random.Random(1)
    texts = [" ".join(rng.choice("abcde") for _ in range(12)) for _ in range(1500)]  # 5-word vocabulary
    finder = NearDuplicateFinder(method="rouge-l", threshold=0.95, max_candidates=10)
    finder.find(texts)
    assert 0 < finder.candidates_checked <= 10 * len(texts)


def test_bit_parallel_lcs_equals_the_dynamic_program() -> None:
    rng = random.Random(2)
    for _ in range(500):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 25))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 25))]
        assert lcs_length(a, b) == metric_lcs_length(a, b)
    assert rouge_l_f1("a b c d".split(), "a c d e f".split()) == 2 * 3 / 9


def test_band_layout_proposes_a_pair_at_the_threshold_with_probability_095() -> None:
    assert band_layout(0.7, 128) == (25, 5)
    assert 1 - (1 - 0.7**5) ** 25 >= 0.95
    assert 1 - (1 - 0.7**6) ** 21 < 0.95  # one more row per band would miss it


def test_signatures_are_seeded_and_estimate_jaccard() -> None:
    a, b = shingle_set(BASE), shingle_set(BASE.replace("today", "tonight"))
    sig = signatures([a, b, set()], num_perm=256, seed=3)
    assert (sig == signatures([a, b, set()], num_perm=256, seed=3)).all()
    assert abs((sig[0] == sig[1]).mean() - 11 / 13) < 0.1
    assert (sig[2] == 2**32 - 1).all()


def test_char_shingles() -> None:
    assert shingle_set("Ab,  CD!", "char", 3) == shingle_set("ab cd", "char", 3)  # {"ab ", "b c", " cd"}
    assert len(shingle_set("ab cd", "char", 3)) == 3
    assert near_dedup(
        [rec("a", "colour"), rec("b", "color")], by="prompt", shingles="char", shingle_size=2, threshold=0.5
    ) == (["a"], {"near-duplicate": 1})  # {co,ol,lo,or} / {co,ol,lo,ou,ur}: 3/6


def test_config_is_validated() -> None:
    with pytest.raises(ValidationError, match="bands"):
        NearDedupConfig(bands=200, num_perm=128)
    with pytest.raises(ValidationError):
        NearDedupConfig(threshold=1.5)
    with pytest.raises(ValidationError):
        NearDedupConfig(method="simhash")
    with pytest.raises(ValidationError):
        NearDedupConfig(shingle=3)  # unknown key
    with pytest.raises(ValidationError, match="rouge-l compares words"):
        NearDedupConfig(method="rouge-l", shingle_size=2)
