"""The self-instruct builder's pure parts: quality score, keyword blocklist, ROUGE-L pool, prompts and
parsing."""

from __future__ import annotations

import random

import pytest

from ift.builtin_plugins.builders.instruct_filters import (
    DEFAULT_BLOCKLIST,
    Quality,
    SimilarityPool,
    blocked_keyword,
    quality,
    repetition,
)
from ift.builtin_plugins.builders.instruct_prompts import (
    instance_prompt,
    instruction_prompt,
    parse_instance,
    parse_instructions,
)
from ift.builtin_plugins.metrics import rouge_l

SEED = "Write a short poem about the sea."


def test_quality_score_parts() -> None:
    assert quality(SEED, "", "Waves fold.", None) == Quality(1.0, 1.0, 1.0, None)  # relevance not scored
    # not capitalised, no final punctuation, a loop of one word; not an instruction word; empty output
    # without a task description relevance does not count: (0.4 x 0.25 + 0.3 x 1/3) / 0.7, under min_quality 0.5
    assert quality("the the the the", "", "", None) == Quality(0.2857, 0.25, 1 / 3, None)
    # relevance: two shared content words ("write", "poem" ~ "poems") is full, none is zero
    assert quality(SEED, "", "Waves.", "Write poems about nature and the ocean").relevance == 1.0
    assert quality(SEED, "", "Waves.", "Explain poems").relevance == 0.5
    assert quality(SEED, "", "Waves.", "Summarize financial reports") == Quality(0.7, 1.0, 1.0, 0.0)
    assert quality("Describe the <object> in detail.", "", "It is round.", None).clarity == pytest.approx(2 / 3)
    assert quality("Translate it.", "bonjour", "bonjour", None).clarity == pytest.approx(2 / 3)  # copies input


def test_blocklist_matches_whole_words_and_phrases() -> None:
    assert blocked_keyword("Draw a picture of a cat.", DEFAULT_BLOCKLIST) == "picture"
    assert blocked_keyword("Go to the store and buy milk.", DEFAULT_BLOCKLIST) == "go to"
    assert blocked_keyword("Explain mapping functions; profile the code.", DEFAULT_BLOCKLIST) is None
    assert blocked_keyword("Plot the data.", ["PLOT"]) == "PLOT"


def test_rouge_pool_keeps_a_paraphrase_below_the_threshold_and_flags_one_above() -> None:
    pool = SimilarityPool(0.7, [SEED, "Name three primary colors."])
    below = "Compose a brief poem describing the sea."  # shares "a poem the sea": F1 = 2*4/14
    above = "Write a short poem about the ocean."  # shares 6 of 7 words: F1 = 6/7
    assert rouge_l(below, SEED) == pytest.approx(4 / 7) and rouge_l(above, SEED) == pytest.approx(6 / 7)
    assert pool.find_similar(below) is None
    assert pool.find_similar(above) == (pytest.approx(6 / 7), SEED)
    assert pool.find_similar("Count the vowels in a word.") is None
    assert SimilarityPool(4 / 7, [SEED]).find_similar(below) == (pytest.approx(4 / 7), SEED)  # at the threshold


def test_rouge_pool_scores_equal_the_rouge_l_metric() -> None:
    rng = random.Random(0)
    vocab = "a the cat dog sat on mat write poem sea short".split()
    for _ in range(300):
        a = " ".join(rng.choices(vocab, k=rng.randint(1, 8)))
        b = " ".join(rng.choices(vocab, k=rng.randint(1, 8)))
        found = SimilarityPool(1e-9, [b]).find_similar(a)
        assert (found[0] if found else 0.0) == pytest.approx(rouge_l(a, b))


def test_prompts_and_parsing() -> None:
    assert instruction_prompt(["Name a color.", "Add  two\nnumbers."], "math drills") == (
        "Come up with new, diverse tasks for this goal: math drills. Each task is one instruction that can be "
        "done with text alone.\n\nTask 1: Name a color.\nTask 2: Add two numbers.\nTask 3:"
    )
    assert parse_instructions(
        " Summarize this text.\nTask 9: Write a haiku.\n\n  \n4) Count words.\n2.5 is a number."
    ) == ["Summarize this text.", "Write a haiku.", "Count words.", "2.5 is a number."]
    assert instance_prompt([("Add.", "2 and 3", "5"), ("Name a color.", "", "Red.")], "Double it.") == (
        "Task: Add.\nInput: 2 and 3\nOutput: 5\n\nTask: Name a color.\nInput: none\nOutput: Red.\n\n"
        "Task: Double it.\nInput:"
    )
    assert parse_instance(" none\nOutput: 42") == ("", "42")
    assert parse_instance(" 3, 4\nOutput: 7 ") == ("3, 4", "7")
    assert parse_instance("just text") == ("", "just text")


def test_repetition_measures_repeated_bigrams_and_trigrams() -> None:
    assert repetition("t t t t") == pytest.approx(2 / 3)
    assert repetition("yes yes yes yes yes yes") > 0.3
    assert repetition("hello world hello world hello world") == pytest.approx(0.6)
    assert repetition(SEED) == 0.0
    assert repetition("Classify the sentiment of the sentence: the food is the best.") == 0.0
    assert repetition("Hi.") == 0.0
