"""Encoded examples kept in flat arrays instead of Python lists.

An :class:`ExampleTable` stores every example's token ids and labels end to end in two int32 arrays, with an
offsets index (example ``i`` is ``ids[offsets[i]:offsets[i + 1]]``), and per-example columns (source, task,
truncated, trainable-token count). That is 8 bytes per token instead of the ~70 of two Python lists of ints.
A :class:`TableWriter` streams examples into raw binary files in a folder; the table then maps those files
(``numpy.memmap``), so the token data lives in the page cache, not in the process's heap, and several
processes opening the same folder share one copy.

Preference examples keep their second sequence (a pair's rejected one) in ``rejected_ids`` / ``rejected_labels``
with offsets of their own (empty spans for other examples), and their kind in ``kind`` (0 an ordinary sequence,
1 a pair, 2 a desirable and 3 an undesirable unpaired completion).

The table is a read-only ``Sequence[EncodedExample]``: ``table[i]`` builds that one example's lists, so
trainers written for lists keep working. Batching reads :attr:`ExampleTable.lengths` and friends without
building any example (see :func:`lengths`, :func:`sources` and :func:`tasks`, which accept either form).
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

from ift.components import EncodedExample

#: Column files of a table folder: name -> (array typecode of the writer, numpy dtype).
COLUMNS = {
    "ids": ("i", "int32"),
    "labels": ("i", "int32"),
    "offsets": ("q", "int64"),
    "label_offsets": ("q", "int64"),
    "source": ("i", "int32"),
    "task": ("i", "int32"),
    "truncated": ("b", "int8"),
    "trainable": ("q", "int64"),
    "rejected_ids": ("i", "int32"),
    "rejected_labels": ("i", "int32"),
    "rejected_offsets": ("q", "int64"),
    "rejected_label_offsets": ("q", "int64"),
    "kind": ("b", "int8"),
}
KINDS = ("sequence", "pair", "desirable", "undesirable")  # the codes of the ``kind`` column
_STREAMED = ("ids", "labels", "rejected_ids", "rejected_labels")  # written out as they fill
FLUSH_TOKENS = 1 << 20  # token buffers are written out every ~4 MB


#: Public: plugins and builtin commands may import these names (see ift.PUBLIC_MODULES).
__all__ = [
    "ExampleTable",
    "PackedRows",
    "TableWriter",
    "kinds",
    "lengths",
    "rejected_lengths",
    "sources",
    "tasks",
    "write_table",
]


class ExampleTable(Sequence[EncodedExample]):
    """Examples in flat arrays (see the module docstring). ``columns`` maps each name of :data:`COLUMNS` to a
    1-d numpy array; ``source_names`` and ``task_names`` decode the ``source`` and ``task`` codes (task -1:
    no task)."""

    def __init__(
        self, columns: dict[str, Any], *, source_names: list[str], task_names: list[str], record_ids: list[str]
    ) -> None:
        self.columns = columns
        self.source_names, self.task_names, self.record_ids = source_names, task_names, record_ids
        #: sha256 of each column file (``name.bin`` -> hex), known when a :class:`TableWriter` wrote the table.
        self.digests: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.record_ids)

    @overload
    def __getitem__(self, index: int) -> EncodedExample: ...

    @overload
    def __getitem__(self, index: slice) -> list[EncodedExample]: ...

    def __getitem__(self, index: int | slice) -> EncodedExample | list[EncodedExample]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"example {index} of {n}")
        c = self.columns
        a, b = int(c["offsets"][index]), int(c["offsets"][index + 1])
        la, lb = int(c["label_offsets"][index]), int(c["label_offsets"][index + 1])
        task = int(c["task"][index])
        example = EncodedExample(
            c["ids"][a:b].tolist(),
            c["labels"][la:lb].tolist(),
            self.source_names[int(c["source"][index])],
            self.record_ids[index],
            truncated=bool(c["truncated"][index]),
            task=self.task_names[task] if task >= 0 else None,
        )
        kind = KINDS[int(c["kind"][index])]
        if kind == "pair":
            ra, rb = int(c["rejected_offsets"][index]), int(c["rejected_offsets"][index + 1])
            rla, rlb = int(c["rejected_label_offsets"][index]), int(c["rejected_label_offsets"][index + 1])
            example.rejected_ids = c["rejected_ids"][ra:rb].tolist()
            example.rejected_labels = c["rejected_labels"][rla:rlb].tolist()
        elif kind != "sequence":
            example.desirable = kind == "desirable"
        return example

    def __iter__(self) -> Iterator[EncodedExample]:
        return (self[i] for i in range(len(self)))

    @property
    def lengths(self) -> Any:
        """Token count of each example (a numpy int64 array)."""
        import numpy as np

        return np.diff(self.columns["offsets"])

    @property
    def trainable(self) -> Any:
        return self.columns["trainable"]

    @property
    def rejected_lengths(self) -> Any:
        """Token count of each pair's rejected sequence (0 for other examples)."""
        import numpy as np

        return np.diff(self.columns["rejected_offsets"])

    def kinds(self) -> list[str]:
        """Each example's kind (``sequence``, ``pair``, ``desirable``, ``undesirable``)."""
        return [KINDS[code] for code in self.columns["kind"].tolist()]

    def sources(self) -> list[str]:
        """Each example's source name, in order."""
        names = self.source_names
        return [names[code] for code in self.columns["source"].tolist()]

    def tasks(self) -> list[str | None]:
        names = self.task_names
        return [names[code] if code >= 0 else None for code in self.columns["task"].tolist()]

    def describe(self) -> dict[str, Any]:
        """What :meth:`open` needs besides the column files (plain JSON)."""
        return {
            "examples": len(self),
            "tokens": int(self.columns["offsets"][-1]),
            "label_tokens": int(self.columns["label_offsets"][-1]),
            "rejected_tokens": int(self.columns["rejected_offsets"][-1]),
            "rejected_label_tokens": int(self.columns["rejected_label_offsets"][-1]),
            "sources": self.source_names,
            "tasks": self.task_names,
            "record_ids": self.record_ids,
        }

    @classmethod
    def open(cls, folder: Path, meta: dict[str, Any]) -> ExampleTable:
        """Map the column files of ``folder`` read-only; ``meta`` is what :meth:`describe` returned."""
        n, tokens, label_tokens = meta["examples"], meta["tokens"], meta["label_tokens"]
        sizes = {
            "ids": tokens,
            "labels": label_tokens,
            "offsets": n + 1,
            "label_offsets": n + 1,
            "rejected_ids": meta["rejected_tokens"],
            "rejected_labels": meta["rejected_label_tokens"],
            "rejected_offsets": n + 1,
            "rejected_label_offsets": n + 1,
        }
        columns = {
            name: _map(folder / f"{name}.bin", dtype, sizes.get(name, n)) for name, (_, dtype) in COLUMNS.items()
        }
        return cls(
            columns,
            source_names=list(meta["sources"]),
            task_names=list(meta["tasks"]),
            record_ids=list(meta["record_ids"]),
        )


def _map(path: Path, dtype: str, count: int) -> Any:
    import numpy as np

    expected = count * np.dtype(dtype).itemsize
    if path.stat().st_size != expected:
        raise ValueError(f"{path.name}: {path.stat().st_size} bytes, expected {expected}")
    if count == 0:  # an empty file cannot be mapped
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


class TableWriter:
    """Streams examples into ``folder`` (created): token buffers are flushed as they fill, so memory stays
    bounded whatever the number of examples. :meth:`close` returns the mapped table, with each file's sha256 in
    its ``digests``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._buffers = {name: array(code) for name, (code, _) in COLUMNS.items()}
        for name in ("offsets", "label_offsets", "rejected_offsets", "rejected_label_offsets"):
            self._buffers[name].append(0)
        self._files = {name: (folder / f"{name}.bin").open("wb") for name in _STREAMED}
        self._digests = {name: hashlib.sha256() for name in COLUMNS}
        self._tokens = self._label_tokens = self._rejected_tokens = self._rejected_label_tokens = 0
        self._source_codes: dict[str, int] = {}
        self._task_codes: dict[str, int] = {}
        self._record_ids: list[str] = []

    def add(self, example: EncodedExample, trainable: int | None = None) -> None:
        b = self._buffers
        _append(b["ids"], example.input_ids)
        _append(b["labels"], example.labels)
        self._tokens += len(example.input_ids)
        self._label_tokens += len(example.labels)
        b["offsets"].append(self._tokens)
        b["label_offsets"].append(self._label_tokens)
        b["source"].append(self._source_codes.setdefault(example.source, len(self._source_codes)))
        b["task"].append(
            -1 if example.task is None else self._task_codes.setdefault(example.task, len(self._task_codes))
        )
        b["truncated"].append(1 if example.truncated else 0)
        b["trainable"].append(example.trainable_tokens if trainable is None else trainable)
        b["kind"].append(KINDS.index(example.kind))
        if example.rejected_ids is not None and example.rejected_labels is not None:
            _append(b["rejected_ids"], example.rejected_ids)
            _append(b["rejected_labels"], example.rejected_labels)
            self._rejected_tokens += len(example.rejected_ids)
            self._rejected_label_tokens += len(example.rejected_labels)
        b["rejected_offsets"].append(self._rejected_tokens)
        b["rejected_label_offsets"].append(self._rejected_label_tokens)
        self._record_ids.append(example.record_id)
        if len(b["ids"]) + len(b["rejected_ids"]) >= FLUSH_TOKENS:
            self._flush()

    def _flush(self) -> None:
        for name, handle in self._files.items():
            data = self._buffers[name].tobytes()
            handle.write(data)
            self._digests[name].update(data)
            self._buffers[name] = array(COLUMNS[name][0])

    def close(self) -> ExampleTable:
        self._flush()
        for handle in self._files.values():
            handle.close()
        for name in COLUMNS:
            if name in self._files:
                continue
            data = self._buffers[name].tobytes()
            (self.folder / f"{name}.bin").write_bytes(data)
            self._digests[name].update(data)
        meta = {
            "examples": len(self._record_ids),
            "tokens": self._tokens,
            "label_tokens": self._label_tokens,
            "rejected_tokens": self._rejected_tokens,
            "rejected_label_tokens": self._rejected_label_tokens,
            "sources": list(self._source_codes),
            "tasks": list(self._task_codes),
            "record_ids": self._record_ids,
        }
        table = ExampleTable.open(self.folder, meta)
        table.digests = {f"{name}.bin": digest.hexdigest() for name, digest in self._digests.items()}
        return table


def _append(buffer: array[int], values: Sequence[int]) -> None:
    """``buffer.extend(values)``; a list goes through ``fromlist``, about three times faster (no iterator)."""
    if type(values) is list:
        buffer.fromlist(values)
    else:
        buffer.extend(values)


def write_table(examples: Sequence[EncodedExample], folder: Path) -> ExampleTable:
    """Examples (a list, or a table) as a table in ``folder``."""
    writer = TableWriter(folder)
    for example in examples:
        writer.add(example)
    return writer.close()


def lengths(examples: Sequence[EncodedExample]) -> list[int]:
    """Each example's token count, without building any example of a table."""
    if isinstance(examples, ExampleTable):
        return list(examples.lengths.tolist())
    return [len(e.input_ids) for e in examples]


def sources(examples: Sequence[EncodedExample]) -> list[str]:
    return examples.sources() if isinstance(examples, ExampleTable) else [e.source for e in examples]


def tasks(examples: Sequence[EncodedExample]) -> list[str | None]:
    return examples.tasks() if isinstance(examples, ExampleTable) else [e.task for e in examples]


class PackedRows(Sequence[list[EncodedExample]]):
    """Packed rows (lists of example indices) as a dataset: a row's examples are built when it is read."""

    def __init__(self, examples: Sequence[EncodedExample], rows: list[list[int]]) -> None:
        self.examples, self.rows = examples, rows

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, index: int) -> list[EncodedExample]: ...

    @overload
    def __getitem__(self, index: slice) -> list[list[EncodedExample]]: ...

    def __getitem__(self, index: int | slice) -> list[EncodedExample] | list[list[EncodedExample]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return [self.examples[i] for i in self.rows[index]]


def file_digest(path: Path) -> str:
    """sha256 of a file, read in blocks (never whole into memory)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def kinds(examples: Sequence[EncodedExample]) -> list[str]:
    """Each example's kind (``sequence``, ``pair``, ``desirable``, ``undesirable``), without building any example
    of a table."""
    return examples.kinds() if isinstance(examples, ExampleTable) else [e.kind for e in examples]


def rejected_lengths(examples: Sequence[EncodedExample]) -> list[int]:
    """Each pair's rejected token count (0 for other examples), without building any example of a table."""
    if isinstance(examples, ExampleTable):
        return list(examples.rejected_lengths.tolist())
    return [len(e.rejected_ids or ()) for e in examples]
