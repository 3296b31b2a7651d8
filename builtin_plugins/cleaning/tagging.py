"""The ``tag`` transform: label each record with a task type and a domain by keyword rules."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import Field, field_validator

import ift
from ift.builtin_plugins.cleaning.keywords import DOMAIN_KEYWORDS, TASK_KEYWORDS
from ift.builtin_plugins.cleaning.text import conversation, instruction, instruction_words, normalize, words


class PhraseMatcher:
    """Finds every occurrence of normalised keyword phrases in a token list by dictionary look-ups (a
    regular expression alternation of hundreds of words is several times slower)."""

    def __init__(self, labels_of: dict[str, list[str]]) -> None:
        self._tables: dict[int, dict[str, list[str]]] = {}
        self._first_words: dict[int, set[str]] = {}
        for phrase, labels in labels_of.items():
            n = len(phrase.split())
            self._tables.setdefault(n, {})[phrase] = labels
            self._first_words.setdefault(n, set()).add(phrase.split()[0])

    def labels(self, tokens: list[str]) -> list[str]:
        """The labels of each keyword occurrence, in no particular order."""
        found: list[str] = []
        for n, table in self._tables.items():
            if n == 1:
                for token in tokens:
                    if token in table:
                        found.extend(table[token])
                continue
            firsts = self._first_words[n]
            for i in range(len(tokens) - n + 1):
                if tokens[i] in firsts:
                    labels = table.get(" ".join(tokens[i : i + n]))
                    if labels:
                        found.extend(labels)
        return found


class KeywordTagger:
    """Rule-based task and domain labels.

    Task: the first label (in map order) with a keyword in the instruction; ``^word`` keywords must be the
    instruction's first word. Domain: the label with most keyword occurrences in the whole conversation
    (ties: map order). None when nothing matches. Keywords match whole words, case and punctuation ignored.
    """

    def __init__(
        self, task_keywords: dict[str, list[str]] | None = None, domain_keywords: dict[str, list[str]] | None = None
    ) -> None:
        tasks = TASK_KEYWORDS if task_keywords is None else task_keywords
        domains = DOMAIN_KEYWORDS if domain_keywords is None else domain_keywords
        self._task_order = {label: i for i, label in enumerate(tasks)}
        self._leading: dict[str, list[str]] = {}
        task_of: dict[str, list[str]] = {}
        for label, keywords in tasks.items():
            for keyword in keywords:
                if keyword.startswith("^"):
                    self._leading.setdefault(normalize(keyword[1:]), []).append(label)
                elif normalize(keyword):
                    task_of.setdefault(normalize(keyword), []).append(label)
        self._tasks = PhraseMatcher(task_of)
        self._domain_order = {label: i for i, label in enumerate(domains)}
        domain_of: dict[str, list[str]] = {}
        for label, keywords in domains.items():
            for keyword in keywords:
                if normalize(keyword):
                    domain_of.setdefault(normalize(keyword), []).append(label)
        self._domains = PhraseMatcher(domain_of)

    def task(self, text: str) -> str | None:
        tokens = instruction_words(text)
        labels = set(self._leading.get(tokens[0], ())) if tokens else set()
        labels.update(self._tasks.labels(tokens))
        return min(labels, key=self._task_order.__getitem__) if labels else None

    def domain(self, text: str) -> str | None:
        hits: dict[str, int] = {}
        for label in self._domains.labels(words(text)):
            hits[label] = hits.get(label, 0) + 1
        if not hits:
            return None
        return min(hits, key=lambda label: (-hits[label], self._domain_order[label]))


class TagConfig(ift.ComponentConfig):
    task_keywords: dict[str, list[str]] | None = Field(
        None,
        description="Task label -> keywords, first match wins; '^word' only as the first word. "
        "Replaces the default map.",
    )
    domain_keywords: dict[str, list[str]] | None = Field(
        None, description="Domain label -> keywords, most hits wins. Replaces the default map."
    )
    fallback_task: str | None = Field("other", description="Task when no keyword matches (None: leave empty).")
    fallback_domain: str | None = Field("general", description="Domain when no keyword matches (None: none).")
    overwrite: bool = Field(False, description="Replace a task or domain the record already has.")

    @field_validator("task_keywords", "domain_keywords")
    @classmethod
    def _not_empty(cls, value: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        if value is not None and not value:
            raise ValueError("give at least one label, or leave the key out for the defaults")
        return value


class Tag(ift.Transform):
    """Set ``record.task`` (when empty) and ``record.metadata["domain"]`` from keyword rules; counts each
    label written as a change (``task: summarization``, ``domain: math``)."""

    name = "tag"
    Config = TagConfig
    config: TagConfig

    def __init__(self, config: ift.ComponentConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.tagger = KeywordTagger(self.config.task_keywords, self.config.domain_keywords)

    def apply(self, records: list[ift.InstructionRecord], tally: ift.Tally) -> list[ift.InstructionRecord]:
        c = self.config
        out = []
        for record in records:
            task, metadata = record.task, record.metadata
            if task is None or c.overwrite:
                label = self.tagger.task(instruction(record)) or c.fallback_task
                if label is not None and label != task:
                    task = label
                    tally.change(f"task: {label}")
            if "domain" not in metadata or c.overwrite:
                label = self.tagger.domain(conversation(record)) or c.fallback_domain
                if label is not None and label != metadata.get("domain"):
                    metadata = {**metadata, "domain": label}
                    tally.change(f"domain: {label}")
            out.append(
                record
                if task is record.task and metadata is record.metadata
                else replace(record, task=task, metadata=metadata)
            )
        return out
