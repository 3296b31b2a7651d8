"""The contract of transforms."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

from ift.components import Tally, Transform
from ift.records import InstructionRecord
from ift.testing.contracts.base import ComponentContract, record_problems
from ift.testing.samples import sample_records


class TransformContract(ComponentContract):
    """A transform returns records from its input (kept, possibly rewritten, in their input order), counts
    every record it drops in the :class:`~ift.Tally` by reason, counts its rewrites as changes, and copes
    with an empty list.

    Set ``component``, ``config`` and ``records``: the input, which should make the transform drop or change
    something. ``expected_ids`` / ``expected_dropped`` (reason -> count) pin the exact result."""

    kind = "transform"
    records: ClassVar[list[InstructionRecord] | None] = None
    expected_ids: ClassVar[list[str] | None] = None
    expected_dropped: ClassVar[dict[str, int] | None] = None

    def input_records(self) -> list[InstructionRecord]:
        return copy.deepcopy(self.records if self.records is not None else sample_records())

    def make_transform(self, base_dir: Path, host: Any) -> Transform:
        cls = self.component_class()
        return cls(self.make_config(base_dir), base_dir=base_dir)  # type: ignore[call-arg]

    def apply(self, base_dir: Path, host: Any, records: list[InstructionRecord]) -> tuple[list[Any], Tally]:
        tally = Tally()
        out = self.make_transform(base_dir, host).apply(list(records), tally)
        assert isinstance(out, list), f"apply() must return a list of records, got {type(out).__name__}"
        return out, tally

    def test_returns_records_from_its_input_in_order(self, base_dir: Path, ift_host: Any) -> None:
        records = self.input_records()
        out, _ = self.apply(base_dir, ift_host, records)
        problems = [p for r in out for p in record_problems(r, require_answer=False)]
        assert not problems, "invalid records returned:\n" + "\n".join(problems[:20])
        available = Counter(r.id for r in records)
        extra = Counter(r.id for r in out) - available
        assert not extra, f"apply() returned records that were not in its input (by id): {sorted(extra)[:10]}"
        position = {r.id: i for i, r in reversed(list(enumerate(records)))}
        order = [position[r.id] for r in out]
        assert order == sorted(order), "apply() must keep the input order of the records it returns"

    def test_every_drop_is_counted(self, base_dir: Path, ift_host: Any) -> None:
        records = self.input_records()
        out, tally = self.apply(base_dir, ift_host, records)
        counted = sum(tally.dropped.values())
        assert len(records) - len(out) == counted, (
            f"{len(records) - len(out)} records were dropped but {counted} counted ({dict(tally.dropped)}); call "
            "tally.drop(reason) once per dropped record"
        )
        assert all(isinstance(r, str) and r and n > 0 for r, n in tally.dropped.items()), (
            f"drop reasons must be non-empty strings with positive counts: {dict(tally.dropped)}"
        )

    def test_every_rewrite_is_counted(self, base_dir: Path, ift_host: Any) -> None:
        records = self.input_records()
        before = {r.id: r.to_dict() for r in records}
        out, tally = self.apply(base_dir, ift_host, records)
        rewritten = [r.id for r in out if r.to_dict() != before[r.id]]
        if rewritten:
            assert sum(tally.changed.values()) > 0, (
                f"records were rewritten ({rewritten[:5]}) but no change was counted; call tally.change(reason)"
            )

    def test_known_result(self, base_dir: Path, ift_host: Any) -> None:
        out, tally = self.apply(base_dir, ift_host, self.input_records())
        if self.expected_ids is not None:
            assert [r.id for r in out] == self.expected_ids
        if self.expected_dropped is not None:
            assert dict(tally.dropped) == self.expected_dropped

    def test_empty_input(self, base_dir: Path, ift_host: Any) -> None:
        out, tally = self.apply(base_dir, ift_host, [])
        assert out == [] and sum(tally.dropped.values()) == 0
