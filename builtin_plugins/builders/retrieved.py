"""The ``retrieved`` source: the instructions of a library most relevant to target tasks.

Every library record is scored against each query (a task description) by a similarity backend (TF-IDF
cosine by default). Each query contributes its ``top_k`` best records scoring at least ``min_score``;
records with no similarity at all (score 0) are never returned. A record found by several queries appears
once, with its best score. Records come out by score, best first (ties in library order), each with
``metadata["retrieval_score"]`` and ``metadata["retrieval_query"]`` (and ``retrieval_task`` when the
queries are named tasks, whose name then becomes the record's task if it has none).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

import ift
from ift.builtin_plugins.builders.nested import key_of, nested_table, open_source
from ift.builtin_plugins.builders.similarity import BUILTIN_BACKENDS, SimilarityBackend, similarity_backends


class RetrievedConfig(ift.ComponentConfig):
    library: dict[str, Any] = Field(description="Nested source of the instruction library.")
    query: str | list[str] | None = Field(None, description="Task description(s) to retrieve for.")
    tasks: dict[str, str] | None = Field(None, description="Named target tasks: {name = 'description'}.")
    top_k: int = Field(10, gt=0, description="Records kept per query.")
    min_score: float = Field(0.0, ge=0.0, le=1.0, description="Similarity floor.")
    match: Literal["prompt", "conversation"] = Field(
        "prompt", description="Text of a library record that is compared: its user turns, or every turn."
    )
    backend: str = Field("tfidf", description="Similarity backend name.")
    backend_options: dict[str, Any] = Field(default_factory=dict, description="Options of the backend.")

    @field_validator("library", mode="before")
    @classmethod
    def _library_table(cls, value: Any, info: ValidationInfo) -> Any:
        return nested_table(value, info.context)

    @model_validator(mode="after")
    def _one_query_kind(self) -> RetrievedConfig:
        if (self.query is None) == (self.tasks is None):
            raise ValueError("set exactly one of query (a description or a list) or tasks ({name = 'description'})")
        if not self.queries():
            raise ValueError("query / tasks is empty")
        if self.backend in BUILTIN_BACKENDS:  # plugin backends are checked when the source runs
            _backend_config(BUILTIN_BACKENDS[self.backend], self.backend_options)
        return self

    def queries(self) -> list[tuple[str | None, str]]:
        """(task name or None, query text) pairs, in recipe order."""
        if self.tasks is not None:
            return list(self.tasks.items())
        return [(None, q) for q in ([self.query] if isinstance(self.query, str) else self.query or [])]


def _backend_config(
    cls: type[SimilarityBackend], options: dict[str, Any], prefix: str = "backend_options."
) -> ift.ComponentConfig:
    try:
        return cls.Config.model_validate(options)
    except ValidationError as exc:
        fields = list(cls.Config.model_fields)
        problems = []
        for e in exc.errors():
            key = ".".join(map(str, e["loc"]))
            hint = ift.did_you_mean(key, fields) if e["type"] == "extra_forbidden" else ""
            problems.append(f"{prefix}{key}: {e['msg']}{hint}")
        raise ValueError("; ".join(problems)) from None


def record_text(record: ift.InstructionRecord, match: str) -> str:
    roles = ("user",) if match == "prompt" else ("system", "user", "assistant")
    return "\n".join(m.content for m in record.messages if m.role in roles)


class RetrievedSource(ift.InstructionSource):
    """Library records most similar to the target tasks (see the module docstring)."""

    name = "retrieved"
    Config = RetrievedConfig
    config: RetrievedConfig

    def backend(self) -> SimilarityBackend:
        backends = similarity_backends(self.host)
        name = self.config.backend
        if name not in backends:
            message = (
                f"unknown similarity backend {name!r}{ift.did_you_mean(name, backends)}; "
                f"available: {', '.join(sorted(backends))}"
            )
            raise ift.RecipeError([ift.Problem(key_of(self, "backend"), message)])
        cls = backends[name]
        try:
            return cls(_backend_config(cls, self.config.backend_options, prefix=""))
        except ValueError as exc:
            raise ift.RecipeError([ift.Problem(key_of(self, "backend_options"), str(exc))]) from None

    def records(self) -> Iterator[ift.InstructionRecord]:
        cfg = self.config
        library_source = open_source(self, cfg.library, "library")
        library = list(library_source.records())
        self._library_fingerprint = library_source.fingerprint()
        if not library:
            return
        backend = self.backend()
        backend.fit([record_text(r, cfg.match) for r in library])
        queries = cfg.queries()
        matrix = backend.scores([text for _, text in queries])
        best: dict[int, tuple[float, int]] = {}  # library index -> (score, query index)
        for q, row in enumerate(matrix):
            scores = [float(s) for s in row]
            ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
            for i in [i for i in ranked if scores[i] > 0 and scores[i] >= cfg.min_score][: cfg.top_k]:
                if i not in best or scores[i] > best[i][0]:
                    best[i] = (scores[i], q)
        for i in sorted(best, key=lambda i: (-best[i][0], i)):
            score, q = best[i]
            task, text = queries[q]
            record = library[i]
            metadata = {**record.metadata, "retrieval_score": round(score, 6), "retrieval_query": text}
            if task is not None:
                metadata["retrieval_task"] = task
            yield dataclasses.replace(record, source=self.source_name, task=record.task or task, metadata=metadata)

    def _digest(self, library_fingerprint: str) -> str:
        digest = hashlib.sha256(self.config.model_dump_json().encode())
        digest.update(library_fingerprint.encode())
        return "sha256:" + digest.hexdigest()[:16]

    def content_fingerprint(self) -> str | None:
        library = open_source(self, self.config.library, "library").content_fingerprint()
        return None if library is None else self._digest(library)

    def fingerprint(self) -> str:
        library = getattr(self, "_library_fingerprint", None)
        return self._digest(
            library if library is not None else open_source(self, self.config.library, "library").fingerprint()
        )
