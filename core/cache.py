"""A disk cache of prepared data (records read, cleaned, split, rendered, tokenized, masked).

The key hashes everything that can change the result: each source's content fingerprint and table, the
transforms, the split settings and seed, the template and its hash, the tokenizer's full definition, the
model adapter's config, the length policy and the ift version. A changed tokenizer or template therefore
never reuses an old entry. Entries are written to a temporary folder and renamed into place after a
``complete.json`` with the arrays' checksums, so an interrupted preparation never leaves an entry that is
later trusted.

Storage is raw little-endian column files (see :mod:`ift.examples`) and JSON (no pickle): loading a cache
entry never runs code. The columns are memory-mapped, so processes using the same entry share one copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ift.components import EncodedExample
from ift.examples import ExampleTable, file_digest, write_table
from ift.records import InstructionRecord

FORMAT = 6  # 2: labels stored with their own lengths (encoder-decoder examples differ); 3: each example's task;
#            4: memory-mapped column files (ift.examples) instead of .npz; 5: default record ids (file:line is the
#            1-based line; hf and templated positions written [row]), which the entries' eval records carry
#            6: preference examples (rejected sequences, kinds) and preference records


def cache_root() -> Path:
    return Path(os.environ.get("IFT_CACHE_DIR", Path.home() / ".cache" / "ift")) / "prepared"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    parts = [
        type(tokenizer).__name__,
        str(getattr(tokenizer, "special_tokens_map", "")),
        str(getattr(tokenizer, "chat_template", "")),
        str(getattr(tokenizer, "padding_side", "")),
    ]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts.append(backend.to_str() if backend is not None else str(getattr(tokenizer, "vocab_size", "")))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def make_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


@dataclass
class Prepared:
    """Prepared data: the examples (lists, or :class:`~ift.examples.ExampleTable` mapped from a folder), the
    eval records and the data report."""

    train: Sequence[EncodedExample]
    eval: Sequence[EncodedExample]
    eval_records: list[InstructionRecord]
    report: dict[str, Any]


class PreparedCache:
    """Entries under ``root/<key>/``: ``train/`` and ``eval/`` hold the column files of an
    :class:`~ift.examples.ExampleTable`, ``meta.json`` the rest, ``complete.json`` every file's sha256."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_root()

    def load(self, key: str) -> Prepared | None:
        """The entry, its tables mapped read-only, or None when it is missing, of another format, or any file's
        checksum does not match (a corrupted entry is never trusted)."""
        entry = self.root / key
        try:
            complete = json.loads((entry / "complete.json").read_text())
            if complete.get("format") != FORMAT or any(
                file_digest(entry / name) != digest for name, digest in complete["files"].items()
            ):
                return None
            meta = json.loads((entry / "meta.json").read_text())
            splits = {split: ExampleTable.open(entry / split, meta[split]) for split in ("train", "eval")}
            records = [InstructionRecord.from_dict(r) for r in meta["eval_records"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return Prepared(splits["train"], splits["eval"], records, meta["report"])

    def begin(self, key: str) -> Path:
        """A fresh temporary folder for the entry ``key``: write the tables into ``<folder>/train`` and
        ``<folder>/eval`` (:class:`~ift.examples.TableWriter`), then :meth:`commit`."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        return tmp

    def commit(self, key: str, folder: Path, prepared: Prepared) -> Path:
        """Write ``meta.json`` and ``complete.json`` (checksums of every file; the tables' own come from the
        :class:`~ift.examples.TableWriter` that wrote them into ``folder/train`` and ``folder/eval``), then rename
        the folder into place. Tables mapped from the folder stay valid through the rename."""
        meta: dict[str, Any] = {}
        digests: dict[str, str] = {}
        for split, table in (("train", prepared.train), ("eval", prepared.eval)):
            if not isinstance(table, ExampleTable) or not table.digests:
                raise TypeError("commit() needs the tables a TableWriter wrote into the entry's folder")
            meta[split] = table.describe()
            digests.update({f"{split}/{name}": digest for name, digest in table.digests.items()})
        meta.update({"eval_records": [r.to_dict() for r in prepared.eval_records], "report": prepared.report})
        (folder / "meta.json").write_text(json.dumps(meta))
        files = {**digests, "meta.json": file_digest(folder / "meta.json")}
        (folder / "complete.json").write_text(json.dumps({"format": FORMAT, "files": files}))
        final = self.root / key
        shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(folder, final)
        except OSError:  # another process stored the same entry meanwhile; keep theirs
            shutil.rmtree(folder, ignore_errors=True)
        return final

    def store(self, key: str, prepared: Prepared) -> Path:
        """Store prepared data held in lists (or tables elsewhere): the tables are written afresh."""
        folder = self.begin(key)
        stored = Prepared(
            write_table(prepared.train, folder / "train"),
            write_table(prepared.eval, folder / "eval"),
            prepared.eval_records,
            prepared.report,
        )
        return self.commit(key, folder, stored)
