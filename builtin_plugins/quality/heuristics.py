"""Per-record checks of the quality report. Each is a heuristic, stated in :data:`DEFINITIONS`."""

from __future__ import annotations

import re

from ift.builtin_plugins.cleaning.text import normalize, words
from ift.records import InstructionRecord

SHORT_WORDS = 3  # instructions with fewer words are "very short"
CONTAMINATION_N = 13
TRUNCATION_WORDS = 20  # an answer this long that stops mid-sentence looks cut
_DANGLING = frozenset("the a an and or of to with for in on but is are that by from at as your my their".split())
_LIST_ITEM = re.compile(r"([-*•]|\d+[.)])\s")

DEFINITIONS = {
    "distinct_1 / distinct_2": "unique word unigrams / bigrams divided by all unigrams / bigrams of the "
    "instructions (first user turn), lower-cased (Li et al. 2016)",
    "leading verb": "the instruction's first word (after 'please', 'can you', ...) when it is a known "
    "imperative verb; verb object: the next noun-like word, skipping articles and common adjectives",
    "tasks / domains": "the record's own task and metadata.domain, else the default keyword rules of the tag "
    "transform ('(none)': no rule matched)",
    "near-duplicate rate": "share of records whose conversation has word-3-gram Jaccard similarity >= 0.7 with an "
    "earlier record (MinHash LSH candidates, verified exactly)",
    "percentiles": "nearest rank: the smallest length with at least that share of records at or below it",
    "very short": f"instruction with fewer than {SHORT_WORDS} words",
    "fragmentary": "instruction ending in a dangling word ('the', 'and', 'of', ...) or in , ; : - (, or with "
    "unbalanced brackets or double quotes",
    "schema conformity": "share of records with their own source's most common set of optional fields "
    "(system turn, task, label, choices, metadata keys other than split); overall, each "
    "record is compared with its own source's set, not one set across all sources",
    "flagged": "each flagged item lists the ids of its records (source/id, the first 50) and a few examples",
    "role-order problems": "conversations that are not: optional system turn, then user/assistant alternating, "
    "ending with the assistant",
    "copied input": "answer equal (case, spacing and punctuation ignored) to the user turn or to one of its paragraphs",
    "truncated": f"answer ending in a dangling word or in , ; : - (, with an unclosed ``` fence or unbalanced "
    f"brackets, or of {TRUNCATION_WORDS}+ words ending in a letter outside a list",
    "outside choices": "record with declared choices whose answer is not one of them (nor starts with one)",
    "contamination": f"non-eval records sharing a word {CONTAMINATION_N}-gram of their user turns with an eval "
    "record (a turn of 4 to 12 words: its whole text)",
}


def _unbalanced(text: str) -> bool:
    return any(text.count(a) != text.count(b) for a, b in ("()", "[]", "{}")) or text.count('"') % 2 == 1


def _dangling(text: str) -> bool:
    stripped = text.rstrip()
    if stripped.endswith((",", ";", ":", "-", "(")):
        return True
    tail = words(stripped[-40:])
    return bool(tail) and tail[-1] in _DANGLING and stripped[-1].isalnum()


def is_fragmentary(text: str) -> bool:
    return bool(text.strip()) and (_dangling(text) or _unbalanced(text))


def looks_truncated(answer: str) -> bool:
    text = answer.rstrip()
    if not text:
        return False
    if _dangling(text) or text.count("```") % 2 == 1 or _unbalanced(text):
        return True
    in_list = bool(_LIST_ITEM.match(text.splitlines()[-1].lstrip()))
    return text[-1].isalpha() and not in_list and len(words(text)) >= TRUNCATION_WORDS


def copies_input(record: InstructionRecord) -> bool:
    answer = normalize(record.answer)
    if not answer:
        return False
    user = next((m.content for m in reversed(record.messages[:-1]) if m.role == "user"), "")
    return answer == normalize(user) or any(answer == normalize(p) for p in user.split("\n\n"))


def outside_choices(record: InstructionRecord) -> bool:
    answer = normalize(record.answer)
    options = {normalize(c) for c in record.choices or []}
    return answer not in options and not any(answer.startswith(o + " ") for o in options if o)


def schema(record: InstructionRecord) -> str:
    fields = [
        name
        for name, present in (
            ("system", any(m.role == "system" for m in record.messages)),
            ("task", record.task is not None),
            ("label", record.label is not None),
            ("choices", bool(record.choices)),
        )
        if present
    ]
    fields += [f"metadata.{k}" for k in sorted(record.metadata) if k != "split"]
    return ", ".join(fields) or "(messages only)"
