"""The contract of preference objectives (``examples = "preference"``, such as ``dpo``, ``orpo``, ``kto``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ift.records import InstructionRecord, Message
from ift.testing.contracts.adapter import to_device
from ift.testing.contracts.base import finite
from ift.testing.contracts.trainer import ObjectiveContract, TrainedTiny

_WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "lemon", "piano", "coral", "amber"]


def sample_pairs(n: int = 10, *, source: str = "sample") -> list[InstructionRecord]:
    """Preference pairs with distinct prompts: the chosen answer does what is asked, the rejected one refuses."""
    return [
        InstructionRecord(
            f"pair-{i}",
            source,
            [Message("user", f"Uppercase: {word}"), Message("assistant", word.upper())],
            rejected=Message("assistant", "I cannot help with that."),
        )
        for i, word in enumerate((_WORDS * (n // len(_WORDS) + 1))[:n])
    ]


class PreferenceObjectiveContract(ObjectiveContract):
    """Every check of :class:`~ift.testing.contracts.ObjectiveContract`, on preference pairs (``records``, by
    default :func:`sample_pairs`), with the loss terms checked on a batch of the objective's own ``loader``:
    one unit per pair (or per example it makes of them), per-example sums adding up to the loss, detached
    figures."""

    records: ClassVar[list[InstructionRecord] | None] = sample_pairs()

    def test_loss_terms_are_well_formed(self, trained: TrainedTiny) -> None:
        import torch

        from ift.objectives import LossTerms
        from ift.progress import Progress
        from ift.training import TrainContext

        tiny, trainer = trained.tiny, self.make_trainer(Path("."))
        objective: Any = trainer.objective(None)  # type: ignore[attr-defined]
        model = trained.result.model
        ctx = TrainContext(
            model=model,
            tokenizer=tiny.tokenizer,
            adapter=tiny.adapter,
            train_examples=trained.examples,
            eval_examples=[],
            seed=0,
            run_dir=Path("."),
            log_step=lambda event: None,
            evaluate=lambda m, stage: {},
            progress=Progress(0, interactive=False, enabled=False),
        )
        objective.ctx = ctx
        objective.setup(ctx, model)
        loader = objective.loader(ctx, "padding")
        assert loader is not None and hasattr(loader.batch_sampler, "select"), (
            "a preference objective brings its own loader, whose batch_sampler has select(epoch, skip=...)"
        )
        batch = to_device(next(iter(loader)), model)
        units = objective.units(batch)
        assert isinstance(units, int) and units == len(batch["record_ids"]) > 0
        terms = objective.loss(model, batch)
        assert isinstance(terms, LossTerms), f"loss() must return ift.LossTerms, got {type(terms).__name__}"
        assert finite(terms.trained()) and terms.trained().requires_grad
        if terms.per_example is not None:
            sums, counts = terms.per_example
            assert torch.allclose(sums.sum(), terms.loss, rtol=1e-4, atol=1e-5)
            assert len(sums) == len(counts) == len(batch["record_ids"])
        for name, value in terms.figures.items():
            assert not getattr(value, "requires_grad", False), f"figure {name!r} must be detached"
