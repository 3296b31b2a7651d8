"""Builtin cleaning transforms beyond ``drop-invalid`` and ``dedup``: near-duplicate removal (MinHash + LSH),
length filters, PII masking, task/domain tagging and eval-set decontamination. Each counts every record it
drops (and every change it makes) by reason."""

from __future__ import annotations

import ift
from ift.builtin_plugins.cleaning.decontam import Decontaminate, contamination, ngrams, read_eval_file
from ift.builtin_plugins.cleaning.filters import LengthFilter
from ift.builtin_plugins.cleaning.minhash import NearDuplicateFinder
from ift.builtin_plugins.cleaning.neardup import NearDedup
from ift.builtin_plugins.cleaning.pii import MaskPII
from ift.builtin_plugins.cleaning.tagging import KeywordTagger, Tag

__all__ = [
    "Decontaminate",
    "KeywordTagger",
    "LengthFilter",
    "MaskPII",
    "NearDedup",
    "NearDuplicateFinder",
    "Tag",
    "contamination",
    "ngrams",
    "read_eval_file",
]


@ift.hookimpl
def ift_register_transforms() -> list[type]:
    return [NearDedup, LengthFilter, MaskPII, Tag, Decontaminate]
