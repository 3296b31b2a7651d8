"""The ``retrieved`` builder: the exact top-k by TF-IDF cosine, best first, with a floor; named target
tasks; and similarity backends that a plugin registers."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import ift
from ift.builtin_plugins.builders.retrieved import RetrievedConfig, RetrievedSource
from ift.builtin_plugins.builders.similarity import SimilarityBackend, TfidfBackend, TfidfConfig
from ift.host import PluginHost

DATA = Path(__file__).resolve().parents[2] / "data" / "builders"
FRENCH = "Translate a sentence into French"


def retrieve(host: PluginHost | None, **config: Any) -> list[ift.InstructionRecord]:
    source = RetrievedSource(
        RetrievedConfig.model_validate({"library": "library.jsonl", **config}),
        source_name="picked",
        base_dir=DATA,
        host=host,
    )
    return list(source.records())


def scored(records: list[ift.InstructionRecord]) -> list[tuple[str, float]]:
    return [(r.id, r.metadata["retrieval_score"]) for r in records]


def test_top_k_best_first_with_scores_and_the_query_in_metadata(host: PluginHost) -> None:
    records = retrieve(host, query=FRENCH, top_k=3)
    assert scored(records) == [("lib-01", 0.615421), ("lib-10", 0.464134), ("lib-06", 0.323845)]
    assert {r.metadata["retrieval_query"] for r in records} == {FRENCH}
    assert {r.source for r in records} == {"picked"}
    assert [(m.role, m.content) for m in records[0].messages] == [
        ("user", "Translate the following sentence into French.\n\nGood morning."),
        ("assistant", "Bonjour."),
    ]


def test_the_floor_drops_lower_scores_and_zero_similarity_is_never_returned(host: PluginHost) -> None:
    assert scored(retrieve(host, query=FRENCH, top_k=5, min_score=0.4)) == [("lib-01", 0.615421), ("lib-10", 0.464134)]
    assert retrieve(host, query=FRENCH, min_score=0.62) == []
    assert retrieve(host, query="zebra xylophone", top_k=10) == []  # no word in common with any record
    assert scored(retrieve(host, query="Summarize a news article", top_k=5)) == [
        ("lib-03", 0.573577),
        ("lib-07", 0.168914),
    ]


def test_named_tasks_each_take_their_top_k_and_a_shared_record_appears_once(host: PluginHost) -> None:
    records = retrieve(
        host,
        tasks={
            "translation": "translate sentences into French",
            "sentiment": "classify the sentiment of a customer review",
        },
        top_k=2,
        min_score=0.2,
    )
    assert [(r.id, r.task, r.metadata["retrieval_task"], r.metadata["retrieval_score"]) for r in records] == [
        ("lib-05", "sentiment", "sentiment", 0.568192),
        ("lib-01", "translation", "translation", 0.514001),
        ("lib-08", "sentiment", "sentiment", 0.392746),
        ("lib-06", "translation", "translation", 0.387744),
    ]
    both = retrieve(host, query=["French word", FRENCH], top_k=3)
    assert Counter(r.id for r in both) == {"lib-01": 1, "lib-06": 1, "lib-10": 1}
    lib06 = next(r for r in both if r.id == "lib-06")
    assert lib06.metadata["retrieval_query"] == "French word"  # its better match of the two queries
    assert lib06.metadata["retrieval_score"] > 0.323845


def test_tfidf_scores_are_the_textbook_cosine() -> None:
    docs = ["red apple pie", "green apple", "blue sky sky"]
    backend = TfidfBackend(TfidfConfig(stop_words=None))
    backend.fit(docs)
    got = backend.scores(["apple sky"])[0]
    vocab = sorted({w for d in docs for w in d.split()})
    idf = {w: math.log(4 / (1 + sum(w in d.split() for d in docs))) + 1 for w in vocab}

    def vector(text: str) -> list[float]:
        counts = Counter(w for w in text.split() if w in idf)
        v = [counts[w] * idf[w] for w in vocab]
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    q = vector("apple sky")
    expected = [sum(a * b for a, b in zip(q, vector(d), strict=True)) for d in docs]
    assert list(got) == pytest.approx(expected)


def test_config_needs_exactly_one_query_kind_and_valid_backend_options() -> None:
    with pytest.raises(ValidationError, match="exactly one of query"):
        RetrievedConfig.model_validate({"library": "library.jsonl"})
    with pytest.raises(ValidationError, match="exactly one of query"):
        RetrievedConfig.model_validate({"library": "library.jsonl", "query": "x", "tasks": {"a": "b"}})
    with pytest.raises(ValidationError, match=r"backend_options.ngram_rang: .*did you mean 'ngram_range'"):
        RetrievedConfig.model_validate({"library": "library.jsonl", "query": "x", "backend_options": {"ngram_rang": 2}})


class OverlapConfig(ift.ComponentConfig):
    scale: float = 1.0


class OverlapBackend(SimilarityBackend):
    """Jaccard similarity of word sets: a stand-in for an embedding backend."""

    name = "overlap"
    Config = OverlapConfig

    def fit(self, texts):
        self.sets = [set(t.lower().split()) for t in texts]

    def scores(self, queries):
        out = []
        for query in queries:
            q = set(query.lower().split())
            out.append([self.config.scale * len(q & s) / len(q | s) for s in self.sets])
        return out


class BackendPlugin:
    def __init__(self, *classes: type) -> None:
        self.classes = classes

    @ift.hookimpl
    def ift_register_similarity_backends(self):
        return list(self.classes)


def test_a_plugin_backend_is_used_by_name(host: PluginHost) -> None:
    host.register(BackendPlugin(OverlapBackend), "overlap-plugin")
    records = retrieve(
        host, query="Give the French word for cat.", top_k=2, backend="overlap", backend_options={"scale": 0.5}
    )
    assert scored(records) == [("lib-06", 0.5), ("lib-07", round(0.5 * 2 / 15, 6))]  # shares "the", "for"
    with pytest.raises(ift.RecipeError, match=r"data\[picked\]\.backend_options: scale: Input should be"):
        retrieve(host, query="x", backend="overlap", backend_options={"scale": "big"})


def test_unknown_and_clashing_backends_are_clear_errors(host: PluginHost) -> None:
    with pytest.raises(ift.RecipeError, match=r"unknown similarity backend 'tfid' \(did you mean 'tfidf'\?\)"):
        retrieve(host, query="x", backend="tfid")

    class Clash(OverlapBackend):
        name = "tfidf"

    host.register(BackendPlugin(Clash), "clash")
    with pytest.raises(
        ift.PluginError,
        match="similarity backend name 'tfidf' is registered twice: by plugin 'builders' .* and by plugin 'clash'",
    ):
        retrieve(host, query="x")
