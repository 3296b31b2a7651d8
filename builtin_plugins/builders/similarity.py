"""Similarity backends for the ``retrieved`` source: TF-IDF cosine (builtin), and any backend a plugin
registers.

A backend is fitted once on the library's texts and then scores queries against them. A plugin adds one
by returning backend classes (subclasses of ``ift.SimilarityBackend``) from a hook::

    @ift.hookimpl
    def ift_register_similarity_backends():
        return [MyEmbeddingBackend]

and a recipe picks it with ``backend = "<name>"`` (options in ``backend_options``, validated by the
backend's ``Config``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

import ift
from ift import SimilarityBackend

__all__ = ["BUILTIN_BACKENDS", "SimilarityBackend", "TfidfBackend", "TfidfConfig", "similarity_backends"]


class TfidfConfig(ift.ComponentConfig):
    ngram_range: tuple[int, int] = Field((1, 1), description="Word n-gram sizes, e.g. [1, 2].")
    stop_words: Literal["english", "none"] | None = Field(
        "english", description="'english' (scikit-learn's English stop-word list) or 'none' (keep every word)."
    )
    sublinear_tf: bool = Field(False, description="Use 1 + log(tf) instead of raw counts.")
    min_df: int = Field(1, ge=1, description="Ignore words in fewer library texts than this.")


class TfidfBackend(SimilarityBackend):
    """Cosine similarity of TF-IDF vectors (scikit-learn), fitted on the library only: a query word that
    no library text contains adds nothing."""

    name = "tfidf"
    Config = TfidfConfig
    config: TfidfConfig

    def fit(self, texts: Sequence[str]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        cfg = self.config
        stop_words = None if cfg.stop_words in (None, "none") else cfg.stop_words  # TOML has no null: "none"
        self.vectorizer = TfidfVectorizer(
            ngram_range=cfg.ngram_range, stop_words=stop_words, sublinear_tf=cfg.sublinear_tf, min_df=cfg.min_df
        )
        try:
            self.matrix = self.vectorizer.fit_transform(texts)
        except ValueError as exc:  # "empty vocabulary": every word is a stop word, or no texts
            raise ift.DataError(f"tfidf: cannot index the library: {exc}") from None

    def scores(self, queries: Sequence[str]) -> Any:
        from sklearn.metrics.pairwise import linear_kernel

        return linear_kernel(self.vectorizer.transform(queries), self.matrix)  # rows are L2-normalised


BUILTIN_BACKENDS: dict[str, type[SimilarityBackend]] = {"tfidf": TfidfBackend}


def similarity_backends(host: Any) -> dict[str, type[SimilarityBackend]]:
    """Every backend by name, as registered on ``host`` (the builtin ones when there is no host)."""
    if host is None:
        return dict(BUILTIN_BACKENDS)
    return {name: reg.cls for name, reg in host.registry["similarity_backend"].items()}  # type: ignore[misc]
