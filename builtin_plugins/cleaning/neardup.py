"""The ``near-dedup`` transform: drop records that nearly duplicate an earlier kept one."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

import ift
from ift.builtin_plugins.cleaning.minhash import NearDuplicateFinder
from ift.builtin_plugins.cleaning.text import conversation, is_eval, prompt


class NearDedupConfig(ift.ComponentConfig):
    by: Literal["conversation", "prompt"] = Field(
        "conversation", description="Compare every turn, or only the user turns."
    )
    method: Literal["minhash", "rouge-l"] = Field(
        "minhash",
        description="minhash: Jaccard similarity of shingle sets; rouge-l: ROUGE-L F1 of the words "
        "(candidates still come from MinHash LSH, so it is never quadratic).",
    )
    threshold: float = Field(0.7, gt=0, le=1, description="A pair at or above this similarity is a near-duplicate.")
    shingles: Literal["word", "char"] = Field("word", description="Shingle unit (minhash).")
    shingle_size: int | None = Field(
        None, gt=0, description="n of the n-gram shingles (minhash); default 3 words or 5 characters."
    )
    num_perm: int = Field(128, ge=8, le=1024, description="MinHash permutations.")
    bands: int | None = Field(
        None,
        gt=0,
        description="LSH bands; default: the layout that proposes a pair at the threshold with probability >= 0.95.",
    )
    max_candidates: int = Field(
        100,
        gt=0,
        description="Most earlier records one record is compared with; keeps "
        "the work linear when many records look alike.",
    )
    seed: int = Field(1, description="Seed of the MinHash permutations.")

    @model_validator(mode="after")
    def _consistent(self) -> NearDedupConfig:
        if self.bands is not None and self.bands > self.num_perm:
            raise ValueError(f"bands ({self.bands}) cannot exceed num_perm ({self.num_perm})")
        if self.method == "rouge-l" and {"shingles", "shingle_size"} & self.model_fields_set:
            raise ValueError('shingles and shingle_size apply to method = "minhash"; rouge-l compares words')
        return self


class NearDedup(ift.Transform):
    """Drop records whose text nearly duplicates an earlier kept record's (MinHash + LSH, every candidate
    pair verified exactly). Records of an eval-only table are compared first and never dropped, so a
    training record close to an eval record is the one that goes."""

    name = "near-dedup"
    Config = NearDedupConfig
    config: NearDedupConfig

    def finder(self) -> NearDuplicateFinder:
        c = self.config
        return NearDuplicateFinder(
            method=c.method,
            threshold=c.threshold,
            shingles=c.shingles,
            shingle_size=c.shingle_size,
            num_perm=c.num_perm,
            bands=c.bands,
            max_candidates=c.max_candidates,
            seed=c.seed,
        )

    def apply(self, records: list[ift.InstructionRecord], tally: ift.Tally) -> list[ift.InstructionRecord]:
        text = conversation if self.config.by == "conversation" else prompt
        duplicate_of = self.finder().find([text(r) for r in records], protected=[is_eval(r) for r in records])
        kept = []
        for record, match in zip(records, duplicate_of, strict=True):
            if match is None:
                kept.append(record)
            else:
                tally.drop("near-duplicate")
        return kept
