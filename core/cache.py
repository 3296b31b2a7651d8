"""A disk cache of prepared data (records read, cleaned, split, rendered, tokenized, masked).

The key hashes everything that can change the result: each source's content fingerprint and table, the
transforms, the split settings and seed, the template and its hash, the tokenizer's full definition, the
model adapter's config, the length policy and the ift version. A changed tokenizer or template therefore
never reuses an old entry. Entries are written to a temporary folder and renamed into place after a
``complete.json`` with the arrays' checksums, so an interrupted preparation never leaves an entry that is
later trusted.

Storage is plain NumPy arrays and JSON (no pickle): loading a cache entry never runs code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ift.components import EncodedExample
from ift.records import InstructionRecord, Message

FORMAT = 3  # 2: labels stored with their own lengths (encoder-decoder examples differ); 3: each example's task


def cache_root() -> Path:
    return Path(os.environ.get("IFT_CACHE_DIR", Path.home() / ".cache" / "ift")) / "prepared"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    parts = [type(tokenizer).__name__, str(getattr(tokenizer, "special_tokens_map", "")),
             str(getattr(tokenizer, "chat_template", "")), str(getattr(tokenizer, "padding_side", ""))]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts.append(backend.to_str() if backend is not None else str(getattr(tokenizer, "vocab_size", "")))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def make_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


@dataclass
class Prepared:
    train: list[EncodedExample]
    eval: list[EncodedExample]
    eval_records: list[InstructionRecord]
    report: dict[str, Any]


def _to_arrays(examples: list[EncodedExample]) -> dict[str, Any]:
    import numpy as np

    lengths = np.array([len(e.input_ids) for e in examples], dtype=np.int64)
    label_lengths = np.array([len(e.labels) for e in examples], dtype=np.int64)
    ids = np.fromiter((t for e in examples for t in e.input_ids), dtype=np.int32, count=int(lengths.sum()))
    labels = np.fromiter((t for e in examples for t in e.labels), dtype=np.int32, count=int(label_lengths.sum()))
    return {"lengths": lengths, "label_lengths": label_lengths, "ids": ids, "labels": labels}


def _from_arrays(arrays: dict[str, Any], meta: list[list[Any]]) -> list[EncodedExample]:
    import numpy as np

    def spans(lengths: Any) -> list[tuple[int, int]]:
        offsets = np.concatenate([[0], np.cumsum(lengths)]).tolist()
        return list(zip(offsets[:-1], offsets[1:], strict=True))

    ids, labels = arrays["ids"].tolist(), arrays["labels"].tolist()
    return [EncodedExample(ids[a:b], labels[c:d], source, record_id, truncated, task)
            for (a, b), (c, d), (source, record_id, truncated, task)
            in zip(spans(arrays["lengths"]), spans(arrays["label_lengths"]), meta, strict=True)]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class PreparedCache:
    """Entries under ``root/<key>/``."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_root()

    def load(self, key: str) -> Prepared | None:
        import numpy as np

        entry = self.root / key
        try:
            complete = json.loads((entry / "complete.json").read_text())
            if complete.get("format") != FORMAT or any(_digest(entry / name) != digest
                                                       for name, digest in complete["files"].items()):
                return None
            meta = json.loads((entry / "meta.json").read_text())
            splits = {}
            for split in ("train", "eval"):
                with np.load(entry / f"{split}.npz", allow_pickle=False) as data:
                    splits[split] = _from_arrays(dict(data), meta[split])
        except (OSError, ValueError, KeyError):
            return None
        records = [InstructionRecord(id=r["id"], source=r["source"], task=r["task"], label=r["label"],
                                     choices=r["choices"], metadata=r["metadata"],
                                     messages=[Message(m["role"], m["content"]) for m in r["messages"]])
                   for r in meta["eval_records"]]
        return Prepared(splits["train"], splits["eval"], records, meta["report"])

    def store(self, key: str, prepared: Prepared) -> Path:
        import numpy as np

        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / key
        tmp = self.root / f".{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        files = {}
        for split, examples in (("train", prepared.train), ("eval", prepared.eval)):
            np.savez(tmp / f"{split}.npz", **_to_arrays(examples))
            files[f"{split}.npz"] = _digest(tmp / f"{split}.npz")
        meta = {"train": [[e.source, e.record_id, e.truncated, e.task] for e in prepared.train],
                "eval": [[e.source, e.record_id, e.truncated, e.task] for e in prepared.eval],
                "eval_records": [r.to_dict() for r in prepared.eval_records], "report": prepared.report}
        (tmp / "meta.json").write_text(json.dumps(meta))
        files["meta.json"] = _digest(tmp / "meta.json")
        (tmp / "complete.json").write_text(json.dumps({"format": FORMAT, "files": files}))
        shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:  # another process stored the same entry meanwhile; keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        return final
