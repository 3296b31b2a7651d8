"""The contract of instruction sources."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ift.components import InstructionSource
from ift.records import InstructionRecord
from ift.testing.contracts.base import ComponentContract, record_problems


class SourceContract(ComponentContract):
    """Every source yields valid canonical records, each with ``source`` set to the recipe's name for it, ids
    unique within the source and the same on every read, and a fingerprint that is stable while the data is.

    Set ``component``, ``config`` and the ``files`` it reads; override :meth:`make_source` when building the
    source needs more than its config (an absolute path, an injected generator)."""

    kind = "source"
    source_name: ClassVar[str] = "contract-data"
    #: At least this many records must come out of ``files`` + ``config``.
    min_records: ClassVar[int] = 1
    #: Whether every record must have an assistant turn (true for anything a recipe trains on).
    require_answer: ClassVar[bool] = True

    def make_source(self, base_dir: Path, host: Any) -> InstructionSource:
        cls = self.component_class()
        return cls(
            self.make_config(base_dir),
            source_name=self.source_name,
            base_dir=base_dir,  # type: ignore[call-arg]
            host=host,
        )

    def read(self, base_dir: Path, host: Any) -> list[InstructionRecord]:
        return list(self.make_source(base_dir, host).records())

    def test_yields_valid_records(self, base_dir: Path, ift_host: Any) -> None:
        records = self.read(base_dir, ift_host)
        assert len(records) >= self.min_records, (
            f"the source yielded {len(records)} records from the test files, fewer than min_records = "
            f"{self.min_records}"
        )
        problems = [
            p for r in records for p in record_problems(r, source=self.source_name, require_answer=self.require_answer)
        ]
        assert not problems, "invalid records:\n" + "\n".join(problems[:20])

    def test_ids_are_unique(self, base_dir: Path, ift_host: Any) -> None:
        ids = [r.id for r in self.read(base_dir, ift_host)]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        assert not repeated, f"record ids repeat within the source: {repeated[:10]}"

    def test_ids_and_contents_are_stable_across_reads(self, base_dir: Path, ift_host: Any) -> None:
        first = self.read(base_dir, ift_host)
        second = self.read(base_dir, ift_host)  # a new instance, as a second run would make
        assert [r.id for r in first] == [r.id for r in second], "a second read gave different ids (or order)"
        changed = [a.id for a, b in zip(first, second, strict=True) if a.messages != b.messages]
        assert not changed, f"the same id carries different messages on a second read: {changed[:10]}"

    def test_fingerprint_is_stable(self, base_dir: Path, ift_host: Any) -> None:
        one, two = self.make_source(base_dir, ift_host), self.make_source(base_dir, ift_host)
        list(one.records())
        list(two.records())
        assert isinstance(one.fingerprint(), str) and one.fingerprint(), "fingerprint() must be a non-empty string"
        assert one.fingerprint() == two.fingerprint(), "fingerprint() differs between two reads of the same data"
        early = self.make_source(base_dir, ift_host).content_fingerprint()
        assert early is None or (isinstance(early, str) and early), (
            "content_fingerprint() must be None or a non-empty string"
        )
