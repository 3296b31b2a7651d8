"""``sft``: the training loop (:func:`ift.train`) minimising :class:`NLL`, the summed cross-entropy of the trained
tokens — supervised fine-tuning, and the base class of trainers that change the objective. It lives in the core so
that plugins subclass a class of the public API (``ift.SFTTrainer``); the builtin plugin registers it."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from ift.components import Trainer
from ift.engine import Callback, TrainingConfig, forward_tokens, sequence_loader, train
from ift.objectives import LossTerms, Objective, ObjectiveConfig
from ift.training import TrainContext, TrainResult

if TYPE_CHECKING:
    from ift.components import EncodedExample

SFTConfig = TrainingConfig


class NLL(Objective):
    """Next-token cross-entropy summed over the trained tokens; per-example sums where the adapter gives them
    (the per-source and per-task training loss come from the same forward pass). Registered as the objective
    ``sft``, whose trainer is :class:`SFTTrainer`."""

    name = "sft"

    def loss(self, model: Any, batch: dict[str, Any]) -> LossTerms:
        adapter = self.ctx.adapter
        split = adapter.loss_by_example(model, batch)
        if split is None:
            return LossTerms(adapter.loss_sum(model, batch)[0])
        sums, counts = split
        return LossTerms(sums.sum(), per_example=(sums, counts))


class SFTTrainer(Trainer):
    """The training loop (:func:`ift.train`) with the :class:`NLL` objective. Subclasses change the objective
    with :meth:`objective` (return another :class:`Objective`) or, the older way, by overriding
    :meth:`loss`."""

    name = "sft"
    Config: ClassVar[type[TrainingConfig]] = SFTConfig
    config: TrainingConfig
    _split: tuple[Any, Any, Any] | None = None  # what example_losses recorded for the current micro-batch

    def objective(self, ctx: TrainContext) -> Objective:
        """What the loop minimises. A subclass overriding :meth:`loss` gets it wrapped as an objective."""
        if type(self).loss is not SFTTrainer.loss:
            return _TrainerLoss(self)
        return NLL(ObjectiveConfig())

    def callbacks(self, ctx: TrainContext) -> list[Callback]:
        """Callbacks for the loop (none by default)."""
        return []

    def training_examples(self, ctx: TrainContext) -> Sequence[EncodedExample]:
        """The sequence examples to train on: ``ctx.train_examples`` by default. The declared way for a trainer to
        add training data (``continual`` mixes in replayed examples here); the per-source and per-task figures
        count what this returns."""
        return ctx.train_examples

    def build_loader(self, ctx: TrainContext, mode: str) -> Any:
        """The batches of :meth:`training_examples` for batching ``mode`` (:func:`ift.engine.sequence_loader`)."""
        examples = self.training_examples(ctx)
        return sequence_loader(ctx, self.config, mode, examples, forward_tokens(ctx, self.config, self.objective(ctx)))

    def train(self, ctx: TrainContext) -> TrainResult:
        return train(
            ctx,
            self.objective(ctx),
            self.config,
            callbacks=self.callbacks(ctx),
            loader=self.build_loader,
            examples=self.training_examples(ctx),
        )

    def loss(self, ctx: TrainContext, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        """Summed loss and trainable-token count of a micro-batch (the :class:`NLL` objective).

        Overriding this is the short way to change the objective; an override's per-source training loss is kept
        when the summed loss it returns *is* the tensor :meth:`example_losses` returned (for instance
        ``super().loss(...)`` unchanged, or ``self.example_losses(batch, sums, counts)`` from its own per-example
        sums). The PEFT method's training penalty is added by the loop either way."""
        split = ctx.adapter.loss_by_example(model, batch)
        if split is None:
            return ctx.adapter.loss_sum(model, batch)
        return self.example_losses(batch, *split)

    def checkpoint_state(self) -> dict[str, Any] | None:
        """What a :meth:`loss`-overriding subclass keeps across a resume (JSON values), handed back to
        :meth:`restore_checkpoint_state`. None (the default): nothing."""
        return None

    def restore_checkpoint_state(self, state: dict[str, Any] | None) -> None:
        """Take back what :meth:`checkpoint_state` saved (None when the checkpoint holds nothing for it)."""

    def example_losses(self, batch: dict[str, Any], sums: Any, counts: Any) -> tuple[Any, Any]:
        """Record each example's summed loss and loss-token count (1-d tensors in ``batch["record_ids"]`` order)
        for the per-source training loss; returns ``(sums.sum(), counts.sum())`` to hand back from :meth:`loss`."""
        total = sums.sum()
        self._split = (total, sums, counts)
        return total, counts.sum()


class _TrainerLoss(Objective):
    """A trainer's :meth:`SFTTrainer.loss` override as an objective; its checkpoint state is the trainer's."""

    name = "trainer-loss"

    def __init__(self, trainer: SFTTrainer) -> None:
        super().__init__(ObjectiveConfig())
        self.owner = trainer

    def loss(self, model: Any, batch: dict[str, Any]) -> LossTerms:
        self.owner._split = None
        total, _ = self.owner.loss(self.ctx, model, batch)
        split, self.owner._split = self.owner._split, None
        per_example = (split[1], split[2]) if split is not None and split[0] is total else None
        return LossTerms(total, per_example=per_example)

    def state(self) -> dict[str, Any] | None:
        return self.owner.checkpoint_state()

    def load_state(self, state: dict[str, Any] | None) -> None:
        self.owner.restore_checkpoint_state(state)


class ObjectiveTrainer(SFTTrainer):
    """The trainer each registered objective becomes (``[trainer] name = "<objective>"``): the loop with that
    objective, its keys the loop's plus the objective's own (see :func:`objective_trainer`)."""

    name = "objective"
    objective_class: ClassVar[type[Objective]]
    _made: Objective | None = None

    def objective(self, ctx: TrainContext | None) -> Objective:
        """This trainer's objective, made once from its keys (the same instance for every call, so a trainer can
        read what its objective kept after training)."""
        if self._made is None:
            cls = self.objective_class
            own = cls.Config.model_construct(**{key: getattr(self.config, key) for key in cls.Config.model_fields})
            self._made = cls(own)
            self._made.training = self.config  # the loop's keys (batch_size, shuffle), for an objective's loader
        return self._made

    def loss(self, ctx: TrainContext, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        """One micro-batch of the objective outside the loop (in a test or a notebook): the summed loss it trains
        (its extra terms included, the PEFT penalty not) and the batch's units."""
        objective = self.objective(ctx)
        objective.ctx = ctx
        return objective.loss(model, batch).trained(), objective.units(batch)


@functools.cache
def objective_trainer(cls: type[Objective]) -> type[SFTTrainer]:
    """The trainer class of objective ``cls``: same name, a Config that has the loop's keys and the objective's.
    Raises ValueError when the objective declares a key the loop already has. An objective that names its own
    ``trainer`` class (``sft``'s is :class:`SFTTrainer`) gets that one."""
    own = getattr(cls, "trainer", None)
    if own is not None:
        if getattr(own, "name", None) != cls.name:
            raise ValueError(f"{cls.__name__}.trainer is named {getattr(own, 'name', None)!r}, not {cls.name!r}")
        return own
    taken = sorted(set(cls.Config.model_fields) & set(TrainingConfig.model_fields))
    if taken:
        raise ValueError(
            f"{cls.__name__}.Config declares {', '.join(taken)}, which the training loop's keys "
            "already use ([trainer] holds both); rename them"
        )
    config = type(
        f"{cls.__name__}TrainingConfig",
        (TrainingConfig, cls.Config),
        {"__module__": cls.__module__, "__doc__": cls.Config.__doc__},
    )
    return type(
        f"{cls.__name__}Trainer",
        (ObjectiveTrainer,),
        {
            "name": cls.name,
            "Config": config,
            "objective_class": cls,
            "__module__": cls.__module__,
            "__doc__": cls.__doc__,
        },
    )


NLL.trainer = SFTTrainer
