"""Filters and the quality score of the ``self-instruct`` builder: pure functions on text, so each can be
tested alone.

Quality score (0..1) = 0.4 x form + 0.3 x clarity + 0.3 x relevance, each part the share of its checks
that pass:

- form (well-formed): starts with an upper-case letter; ends with ``.``, ``?``, ``!`` or ``:``; at least
  70% of its non-space characters are letters; at least 60% of its words are distinct (no loops).
- clarity: the first word is an instruction verb or a question word (``write``, ``classify``, ``what``,
  ...); no unfinished text (``...``, ``etc``, a placeholder in ``<>`` or ``[]``, unbalanced brackets or
  quotes); the instance's output is not empty and does not repeat the instruction or the input.
- relevance to the stated task: the instruction and input share at least two content words (stop words
  removed, a trailing ``s`` ignored) with the task description (one word: 0.5, none: 0). Without a task
  description relevance is not scored (``None``) and the score is (0.4 x form + 0.3 x clarity) / 0.7, so a
  missing description never counts as full relevance.

Before scoring, degenerate text is rejected outright (reason ``repetitive``): :func:`repetition` is the share
of repeated word bigrams or trigrams (1 - distinct / total, the larger of the two), and an instruction, input
or output above ``max_repetition`` (default 0.3) is a loop such as ``t t t t`` or ``yes yes yes yes``. Words
are those of :func:`words` (lower-cased, each ASCII punctuation character replaced by a space, split on
whitespace; articles are kept).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from ift.builtin_plugins.metrics import lcs_length, normalize_answer

# Self-Instruct's list (Wang et al., 2023): tasks a text-only model cannot do.
DEFAULT_BLOCKLIST = [
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
    "video",
    "audio",
    "music",
    "flowchart",
    "diagram",
]

INSTRUCTION_WORDS = frozenset(
    """
add analyze answer arrange calculate categorize change check choose classify combine compare complete
compose compute convert correct count create define describe design detect determine develop edit
elaborate estimate evaluate explain extract fill find fix generate give guess identify imagine improve
infer list make match name outline paraphrase pick predict prepare produce propose provide rank rate
recommend reorder rephrase replace respond rewrite select sort solve specify suggest summarize tell
transform translate turn use verify write
what which who whom whose when where why how is are can could does do did should would will
""".split()
)

STOP_WORDS = frozenset(
    """
a an the and or but if then of to in on at by for with from into about as is are was were be been being
this that these those it its you your we our they their he she his her i me my not no do does did
given following some any each every all which what who how when where why can could should would will
""".split()
)

_PLACEHOLDER = re.compile(r"\.\.\.|…|\betc\b|<[^>]*>|\[[^\]]*\]", re.IGNORECASE)
_PAIRS = (("(", ")"), ("[", "]"), ("{", "}"))


@dataclass(frozen=True)
class Quality:
    """The score and its parts (kept in each generated record's metadata)."""

    score: float
    form: float
    clarity: float
    relevance: float | None


def words(text: str) -> list[str]:
    return normalize_answer(text).split()


def blocked_keyword(text: str, blocklist: Iterable[str]) -> str | None:
    """The first blocklisted word or phrase in ``text`` (whole words, any case), or None."""
    normalized = f" {' '.join(words(text))} "
    for keyword in blocklist:
        phrase = " ".join(words(keyword))
        if phrase and f" {phrase} " in normalized:
            return keyword
    return None


def _content(text: str) -> set[str]:
    return {w[:-1] if len(w) > 3 and w.endswith("s") else w for w in words(text) if w not in STOP_WORDS}


def _balanced(text: str) -> bool:
    return all(text.count(a) == text.count(b) for a, b in _PAIRS) and text.count('"') % 2 == 0


def quality(instruction: str, input_text: str, output: str, task_description: str | None) -> Quality:
    """The documented heuristic score (see the module docstring)."""
    text = instruction.strip()
    tokens = text.split()
    non_space = [c for c in text if not c.isspace()]
    form_checks = [
        bool(text) and text[0].isupper(),
        text.endswith((".", "?", "!", ":")),
        bool(non_space) and sum(c.isalpha() for c in non_space) / len(non_space) >= 0.7,
        bool(tokens) and len({t.lower() for t in tokens}) / len(tokens) >= 0.6,
    ]
    first = words(text)[0] if words(text) else ""
    out = normalize_answer(output)
    clarity_checks = [
        first in INSTRUCTION_WORDS,
        not _PLACEHOLDER.search(text) and _balanced(text),
        bool(out) and out != normalize_answer(text) and out != normalize_answer(input_text),
    ]
    form = sum(form_checks) / len(form_checks)
    clarity = sum(clarity_checks) / len(clarity_checks)
    if not task_description:
        return Quality(round((0.4 * form + 0.3 * clarity) / 0.7, 4), form, clarity, None)
    shared = len(_content(f"{text} {input_text}") & _content(task_description))
    relevance = min(shared, 2) / 2
    return Quality(round(0.4 * form + 0.3 * clarity + 0.3 * relevance, 4), form, clarity, relevance)


def repetition(text: str) -> float:
    """How much of ``text`` repeats itself: the larger of 1 - distinct / total over its word bigrams and
    trigrams (0 for text without repeats or under three words; ``t t t t`` gives 0.67)."""
    tokens = words(text)
    worst = 0.0
    for n in (2, 3):
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        if len(grams) >= 2:
            worst = max(worst, 1 - len(set(grams)) / len(grams))
    return worst


class SimilarityPool:
    """Texts kept so far, for the ROUGE-L filter (the same F1 as :func:`ift.builtin_plugins.metrics.rouge_l`).
    A pool text whose shared-word count cannot reach the threshold is skipped (the longest common
    subsequence is at most that count), so only plausible near-duplicates pay for the quadratic LCS."""

    def __init__(self, threshold: float, texts: Iterable[str] = ()) -> None:
        self.threshold = threshold
        self.entries: list[tuple[str, list[str], Counter[str]]] = []
        for text in texts:
            self.add(text)

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, text: str) -> None:
        tokens = words(text)
        self.entries.append((text, tokens, Counter(tokens)))

    def find_similar(self, text: str) -> tuple[float, str] | None:
        """The first pool text with ROUGE-L F1 >= the threshold, and that score; None if there is none."""
        tokens = words(text)
        counts = Counter(tokens)
        for other, other_tokens, other_counts in self.entries:
            total = len(tokens) + len(other_tokens)
            if not total or 2 * sum((counts & other_counts).values()) / total < self.threshold:
                continue
            lcs = lcs_length(tokens, other_tokens)
            score = 2 * lcs / total  # F1 of precision lcs/len(a) and recall lcs/len(b)
            if lcs and score >= self.threshold:
                return score, other
        return None
