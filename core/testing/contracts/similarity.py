"""The contract of similarity backends (used by retrieval-based sources)."""

from __future__ import annotations

from typing import ClassVar

from ift.components import SimilarityBackend
from ift.testing.contracts.base import ComponentContract

TEXTS = [
    "Translate this sentence into French.",
    "Summarize the following news article.",
    "Write a haiku about autumn leaves.",
    "Solve the quadratic equation for x.",
]


class SimilarityBackendContract(ComponentContract):
    """A similarity backend fitted on texts scores every query against every text in [0, 1], and a query
    equal to one of the texts scores that text highest.

    Set ``component`` and ``config``; ``texts`` defaults to four unrelated instructions."""

    kind = "similarity_backend"
    texts: ClassVar[list[str]] = TEXTS

    def make_backend(self) -> SimilarityBackend:
        cls = self.component_class()
        backend = cls(self.make_config(None))  # type: ignore[arg-type]
        backend.fit(list(self.texts))
        return backend

    def test_scores_every_query_against_every_text(self) -> None:
        queries = [self.texts[0], "something else entirely"]
        rows = [[float(s) for s in row] for row in self.make_backend().scores(queries)]
        assert len(rows) == len(queries) and all(len(row) == len(self.texts) for row in rows), (
            f"scores() must be {len(queries)} x {len(self.texts)}"
        )
        assert all(-1e-6 <= s <= 1 + 1e-6 for row in rows for s in row), f"scores outside [0, 1]: {rows}"

    def test_an_identical_text_scores_highest(self) -> None:
        backend = self.make_backend()
        for i, text in enumerate(self.texts):
            row = [float(s) for s in backend.scores([text])[0]]
            assert max(range(len(row)), key=lambda j: row[j]) == i, f"{text!r} is not its own best match: {row}"
            assert row[i] > 0.99, f"{text!r} scores {row[i]} against itself; expected about 1.0"
