"""Shared fixtures: a fresh plugin host per test, the byte-level tokenizer, recipe builders, and an
independent oracle for the byte tokenizer's ids (so expected token lists are not computed by the code
under test)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ift.host import PluginHost

# ift's own pytest plugin: ift_host, ift_tiny_model, ift_run and the contract suites (see ift.testing).
pytest_plugins = ["ift.testing"]

# No test may touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}
MODEL_TABLE = {"adapter": "causal-lm", "tokenizer": "byte-level", "device": "cpu", "from_config": TINY_LLAMA}


@pytest.fixture(scope="session", autouse=True)
def _datasets_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the ``datasets`` cache of file sources out of the user's home."""
    cache = str(tmp_path_factory.mktemp("hf-datasets-cache"))
    old = os.environ.get("HF_DATASETS_CACHE")
    os.environ["HF_DATASETS_CACHE"] = cache
    try:
        import datasets.config

        datasets.config.HF_DATASETS_CACHE = Path(cache)
    except ImportError:  # pragma: no cover
        pass
    yield
    if old is None:
        os.environ.pop("HF_DATASETS_CACHE", None)
    else:
        os.environ["HF_DATASETS_CACHE"] = old


@pytest.fixture(scope="session", autouse=True)
def _ift_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep ift's prepared-data cache out of the user's home (subprocesses inherit it)."""
    old = os.environ.get("IFT_CACHE_DIR")
    os.environ["IFT_CACHE_DIR"] = str(tmp_path_factory.mktemp("ift-cache"))
    yield
    if old is None:
        os.environ.pop("IFT_CACHE_DIR", None)
    else:
        os.environ["IFT_CACHE_DIR"] = old


@pytest.fixture
def host(ift_host: PluginHost) -> PluginHost:
    """A fresh host with the builtin plugins only (ift.testing's ``ift_host``); whatever a test registers is
    unregistered after."""
    return ift_host


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """The byte-level tokenizer (256 byte tokens, then <|pad|>, <|endoftext|>, <|im_start|>, <|im_end|>)."""
    from ift.builtin_plugins.byte_tokenizer import build_byte_tokenizer

    return build_byte_tokenizer()


# --- an independent oracle for the byte tokenizer's ids ------------------------------------------

SPECIAL_IDS = {"<|pad|>": 256, "<|endoftext|>": 257, "<|im_start|>": 258, "<|im_end|>": 259}
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(s) for s in SPECIAL_IDS) + ")")


def _byte_to_char() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


_CHAR_OF = _byte_to_char()
_RANK = {ch: i for i, ch in enumerate(sorted(_CHAR_OF.values()))}


def expected_byte_ids(text: str) -> list[int]:
    """Ids the byte tokenizer must give ``text``: one per UTF-8 byte (vocabulary sorted by character),
    special tokens as single ids."""
    ids: list[int] = []
    for piece in _SPECIAL_RE.split(text):
        if piece in SPECIAL_IDS:
            ids.append(SPECIAL_IDS[piece])
        else:
            ids.extend(_RANK[_CHAR_OF[b]] for b in piece.encode("utf-8"))
    return ids


@pytest.fixture
def byte_ids() -> Callable[[str], list[int]]:
    return expected_byte_ids


# --- recipes -------------------------------------------------------------------------------------


@pytest.fixture
def make_recipe(host: PluginHost, tmp_path: Path) -> Callable[..., Any]:
    """Build a validated Recipe from a few sections; relative data paths resolve against tmp_path."""
    from ift.recipe import validate_recipe

    def build(data: list[dict[str, Any]] | None = None, **sections: Any) -> Any:
        raw: dict[str, Any] = {
            "data": data if data is not None else [{"source": "jsonl", "path": "d.jsonl"}],
            "model": dict(MODEL_TABLE),
        }
        raw.update(sections)
        return validate_recipe(raw, host, base_dir=tmp_path)

    return build
