"""The contract of trainers."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest

from ift.components import Renderer, Trainer
from ift.config import TrainerConfig
from ift.records import InstructionRecord
from ift.testing.contracts.adapter import bound_renderer, to_device
from ift.testing.contracts.base import ComponentContract, finite
from ift.testing.models import TinyModel, load_tiny_model, tiny_model_table
from ift.testing.samples import sample_records


@dataclass
class TrainedTiny:
    """One contract training run: the model before and after, what the trainer returned and logged."""

    tiny: TinyModel
    before: dict[str, Any]
    result: Any
    events: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[str] = field(default_factory=list)
    examples: list[Any] = field(default_factory=list)
    loss_before: float = math.nan


class TrainerContract(ComponentContract):
    """A trainer trains the tiny model a few steps through :class:`~ift.TrainContext` and returns a
    :class:`~ift.TrainResult` with ``steps > 0``, changed and finite weights, a model that still computes a
    finite loss, a JSON-serializable summary, and well-formed logged steps.

    Set ``component`` and ``config`` (few steps: e.g. ``{"max_steps": 2, "batch_size": 4}``). The model is
    ``model_table`` (the tiny causal LM by default) and the data ``records`` (eight sample records), rendered
    with ``renderer`` (alpaca)."""

    kind = "trainer"
    records: ClassVar[list[InstructionRecord] | None] = None
    renderer: ClassVar[type[Renderer] | None] = None
    model_table: ClassVar[dict[str, Any] | None] = None

    def make_trainer(self, base_dir: Path) -> Trainer:
        cls = self.component_class()
        return cls(self.make_config(base_dir))

    def make_model(self, base_dir: Path) -> TinyModel:
        from ift.host import PluginHost

        table = self.model_table if self.model_table is not None else tiny_model_table()
        return load_tiny_model(PluginHost(entry_points=False), table, base_dir=base_dir)

    def prepare(self, folder: Path) -> None:
        """Make what the trainer needs besides its config (a teacher model, an earlier run) in ``folder``,
        the recipe's folder, before the trainer is built. Nothing by default."""

    @pytest.fixture(scope="class")
    @classmethod
    def trained(cls, tmp_path_factory: pytest.TempPathFactory) -> TrainedTiny:
        """One training run per test class; the checks look at its outcome."""
        from ift.data import DataReport, encode_records
        from ift.evaluation import Evaluator
        from ift.progress import Progress
        from ift.testing.samples import write_files
        from ift.training import TrainContext

        self = cls()
        folder = tmp_path_factory.mktemp("trainer-contract")
        write_files(folder, self.files)
        self.prepare(folder)
        trainer = self.make_trainer(folder)
        tiny = self.make_model(folder)
        renderer = bound_renderer(self.renderer, folder, tiny.tokenizer)
        records = list(self.records if self.records is not None else sample_records(8))
        cfg = cast(TrainerConfig, trainer.config)

        def encode(batch: list[InstructionRecord]) -> list[Any]:
            return encode_records(batch, renderer, tiny.adapter, tiny.tokenizer, cfg, "extra", DataReport())[0]

        def evaluate_records(model: Any, batch: list[InstructionRecord], stage: str) -> dict[str, Any]:
            examples, kept = encode_records(batch, renderer, tiny.adapter, tiny.tokenizer, cfg, "extra", DataReport())
            from ift.builtin_plugins.metrics import LossMetric

            return Evaluator(
                adapter=tiny.adapter,
                tokenizer=tiny.tokenizer,
                renderer=renderer,
                metrics=[LossMetric(LossMetric.Config())],
                records=kept,
                examples=examples,
                batch_size=4,
                max_new_tokens=4,
                stop=[],
                samples=0,
            )(model, stage)

        train_examples, eval_examples = encode(records[:-2]), encode(records[-2:])
        outcome = TrainedTiny(
            tiny,
            tiny.snapshot(),
            None,
            examples=train_examples,
            loss_before=mean_loss(tiny, tiny.model, train_examples),
        )

        def evaluate(model: Any, stage: str) -> dict[str, Any]:
            outcome.evaluations.append(stage)
            return evaluate_records(model, records[-2:], stage)

        ctx = TrainContext(
            model=tiny.model,
            tokenizer=tiny.tokenizer,
            adapter=tiny.adapter,
            train_examples=train_examples,
            eval_examples=eval_examples,
            seed=0,
            run_dir=folder,
            log_step=outcome.events.append,
            evaluate=evaluate,
            progress=Progress(0, interactive=False, enabled=False),
            checkpoint_dir=folder / "checkpoints",
            encode_records=encode,
            evaluate_records=evaluate_records,
        )
        outcome.result = trainer.train(ctx)
        return outcome

    def test_returns_a_train_result_with_steps(self, trained: TrainedTiny) -> None:
        from ift.training import TrainResult

        result = trained.result
        assert isinstance(result, TrainResult), f"train() must return an ift.TrainResult, got {type(result).__name__}"
        assert isinstance(result.steps, int) and result.steps > 0, f"TrainResult.steps is {result.steps!r}"

    def test_changes_the_weights(self, trained: TrainedTiny) -> None:
        after = dict(trained.result.model.named_parameters())
        changed = [
            n for n, p in trained.before.items() if n in after and not bool((after[n].detach().cpu() == p.cpu()).all())
        ]
        assert changed, "no trainable weight changed during training"
        broken = [n for n, p in after.items() if not bool(p.detach().isfinite().all())]
        assert not broken, f"non-finite weights after training: {broken[:5]}"

    def test_trained_model_still_computes_a_finite_loss(self, trained: TrainedTiny) -> None:
        import torch

        tiny, model = trained.tiny, trained.result.model
        batch = to_device(tiny.adapter.collate(tiny.tokenizer, trained.examples[:4]), model)
        with torch.no_grad():
            loss, count = tiny.adapter.loss_sum(model, batch)
        assert finite(loss) and int(count) > 0

    def test_a_few_steps_lower_the_training_loss(self, trained: TrainedTiny) -> None:
        after = mean_loss(trained.tiny, trained.result.model, trained.examples)
        assert after < trained.loss_before, (
            f"the mean loss of the training examples did not go down: {trained.loss_before:.6f} before, "
            f"{after:.6f} after {trained.result.steps} steps (is the objective minimised? raise the contract "
            "config's learning_rate or max_steps if it is too small to show)"
        )

    def test_steps_are_logged_with_their_loss(self, trained: TrainedTiny) -> None:
        logged = [e for e in trained.events if isinstance(e.get("step"), int)]
        assert logged, "no step was logged: call ctx.log_step with each logged step's event"
        assert logged[-1]["step"] == trained.result.steps, (
            f"the last step ({trained.result.steps}) was not logged (last logged: {logged[-1]['step']})"
        )
        assert all("loss" in e for e in logged), "every logged step needs its 'loss'"

    def test_summary_is_json_serializable(self, trained: TrainedTiny) -> None:
        assert isinstance(trained.result.summary, dict)
        json.dumps(trained.result.summary)  # lands in metrics.json

    def test_logged_steps_are_well_formed(self, trained: TrainedTiny) -> None:
        logged = [e.get("step") for e in trained.events]
        steps = [s for s in logged if isinstance(s, int) and s > 0]
        assert steps == logged, f"every logged event needs a positive step: {logged}"
        assert steps == sorted(steps) and len(set(steps)) == len(steps), f"logged steps must increase: {steps}"
        assert not steps or steps[-1] <= trained.result.steps
        for event in trained.events:
            json.dumps(event)  # one events.jsonl line each
            if "loss" in event:
                assert finite(event["loss"]), f"logged loss {event['loss']!r} is not finite"


def mean_loss(tiny: TinyModel, model: Any, examples: list[Any]) -> float:
    """The adapter's mean loss per trained token over ``examples`` (no gradients, eval mode, then back)."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), 4):
            batch = to_device(tiny.adapter.collate(tiny.tokenizer, examples[start : start + 4]), model)
            loss, n = tiny.adapter.loss_sum(model, batch)
            total, count = total + float(loss), count + int(n)
    model.train(was_training)
    return total / max(count, 1)


class ObjectiveContract(TrainerContract):
    """An objective trains the tiny model through the trainer it becomes (the loop's keys and its own, from
    ``config``), with every check of :class:`TrainerContract`, and its loss terms are well formed on a batch."""

    kind = "objective"

    def make_trainer(self, base_dir: Path) -> Trainer:
        from ift.sft import objective_trainer

        cls = objective_trainer(self.component_class())  # type: ignore[arg-type]
        return cls(cls.Config(**self.config))

    def loss_objective(self, trained: TrainedTiny) -> Any:
        """The objective whose loss terms :meth:`test_loss_terms_are_well_formed` checks on a batch of the trained
        model: a fresh one made from ``config``, its ``ctx`` holding the adapter and the tokenizer; its ``setup`` is
        not called. Override to give it what its ``setup`` would make (a teacher model, say)."""
        trainer = self.make_trainer(Path("."))
        objective = trainer.objective(None)  # type: ignore[attr-defined]
        objective.ctx = type("Ctx", (), {"adapter": trained.tiny.adapter, "tokenizer": trained.tiny.tokenizer})()
        return objective

    def test_loss_terms_are_well_formed(self, trained: TrainedTiny) -> None:
        import torch

        from ift.objectives import LossTerms

        tiny, objective = trained.tiny, self.loss_objective(trained)
        model = trained.result.model
        batch = to_device(tiny.adapter.collate(tiny.tokenizer, trained.examples[:4]), model)
        units = objective.units(batch)
        assert isinstance(units, int) and units > 0, f"units(batch) must be a positive int, got {units!r}"
        terms = objective.loss(model, batch)
        assert isinstance(terms, LossTerms), f"loss() must return ift.LossTerms, got {type(terms).__name__}"
        assert finite(terms.trained()) and terms.trained().requires_grad, (
            "the trained loss must be finite and carry the graph"
        )
        if terms.per_example is not None:
            sums, counts = terms.per_example
            assert torch.allclose(sums.sum(), terms.loss, rtol=1e-4, atol=1e-5), (
                "per-example sums must add up to the loss"
            )
            assert len(sums) == len(counts) == len(batch["record_ids"])
