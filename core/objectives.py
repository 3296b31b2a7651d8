"""Training objectives: what the training loop (:func:`ift.train`) minimises.

An objective turns one micro-batch into explicit loss terms (:class:`LossTerms`). The loop owns everything else:
epochs, token-normalised gradient accumulation across micro-batches and processes, clipping, non-finite
handling, the PEFT method's own training penalty, evaluation schedules, checkpoints and exact resume. Each
registered objective is also a trainer of the same name (``[trainer] name = "dpo"``), whose keys are the loop's
(:class:`ift.TrainingConfig`) plus the objective's own ``Config``.

Units: an objective says what one unit of its loss is (a trained token for ``nll``, a pair for ``dpo``) through
:meth:`Objective.units`, which the loop calls before any forward pass: the loop divides every summed term by the
units of the whole optimizer step, so accumulation and data parallelism give the same gradient as one big batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ift.components import Component
from ift.config import ComponentConfig

if TYPE_CHECKING:
    from ift.training import TrainContext


#: Public: plugins and builtin commands may import these names (see ift.PUBLIC_MODULES).
__all__ = ["LossTerms", "Objective", "ObjectiveConfig"]


class ObjectiveConfig(ComponentConfig):
    """Base of an objective's own keys. They sit in the recipe's ``[trainer]`` table beside the loop's keys, so
    their names must not collide with :class:`ift.TrainingConfig`'s."""


@dataclass
class LossTerms:
    """What an objective computed for one micro-batch.

    - ``loss``: the summed loss of the micro-batch in the objective's units (a tensor that carries the graph).
    - ``per_example``: optional ``(sums, units)``, 1-d tensors in ``batch["record_ids"]`` order whose sums add up
      to ``loss``; the loop reports them per source and per task.
    - ``extra``: further summed terms that are trained too (a regulariser), each reported under its name. A term
      that should enter the step's mean loss once (a penalty ``p`` on the weights) is ``p * units`` of this
      micro-batch: the loop divides by the step's units.
    - ``figures``: summed figures that are reported, never trained (reward accuracy, margins), per unit like the
      loss; detach them.
    """

    loss: Any
    per_example: tuple[Any, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)

    def trained(self) -> Any:
        """The tensor the loop backpropagates: ``loss`` plus every extra term."""
        total = self.loss
        for term in self.extra.values():
            total = total + term
        return total


class Objective(Component, ABC):
    """A training objective. Subclass it, set ``name``, declare ``Config`` (a subclass of
    :class:`ObjectiveConfig`) and return the class from ``ift_register_objectives``.

    ``examples`` says which encoded examples it trains on: ``"sequence"`` (one sequence each, the SFT data) or
    ``"preference"`` (a chosen and a rejected completion of the same prompt). The loop builds batches from them
    with the model adapter and hands each micro-batch to :meth:`loss`.
    """

    Config: ClassVar[type[ComponentConfig]] = ObjectiveConfig
    examples: ClassVar[str] = "sequence"
    #: The run's context, set by the loop before :meth:`setup` (the adapter, the tokenizer, the examples).
    ctx: TrainContext
    #: The trainer that runs this objective, when it is not the generated one (the loop's keys plus ``Config``):
    #: a trainer class of the same name.
    trainer: ClassVar[type[Any] | None] = None
    #: The loop's configuration (:class:`ift.TrainingConfig`: ``batch_size``, ``shuffle``...), set by the loop
    #: before :meth:`setup`, for an objective's own :meth:`loader`.
    training: Any = None

    def loader(self, ctx: TrainContext, mode: str) -> Any:
        """The batches to train on, for objectives whose examples are not plain sequences: a DataLoader whose
        ``batch_sampler`` has ``select(epoch, skip=...)`` and ``len`` (as :class:`ift.batching.BatchPlan` does, so a
        resume continues exactly). ``mode`` is the resolved ``trainer.batching``. None (the default): the loop's
        own loader of sequence examples. Every batch carries ``loss_tokens``, ``real_tokens``, ``num_examples``,
        ``input_ids`` (for the throughput figures) and ``record_ids``, ``sources``, ``tasks`` (one per example)."""
        return None

    def setup(self, ctx: TrainContext, model: Any) -> None:  # noqa: B027 - optional hook, empty by default
        """Called once before the first step, with the model as it will be trained (load a teacher or a
        reference model here, precompute what the loss needs)."""

    def splits(self) -> bool:
        """Whether a micro-batch may run as several forward/backward passes of whole examples
        (``[trainer] max_tokens_per_forward``): true when the loss is a sum over examples, as the default and
        every token-summed objective's is. An objective that couples the examples of a micro-batch (a
        perturbation normalised over the whole batch) returns False."""
        return True

    def units(self, batch: Mapping[str, Any]) -> int:
        """How many units of loss this micro-batch holds (trained tokens by default), known before the forward
        pass."""
        return int(batch["loss_tokens"])

    @abstractmethod
    def loss(self, model: Any, batch: dict[str, Any]) -> LossTerms:
        """The loss terms of one micro-batch."""

    def state(self) -> dict[str, Any] | None:
        """JSON values this objective keeps across a resume (running figures, a schedule's position); saved with
        every checkpoint and handed back to :meth:`load_state`. None (the default): nothing."""
        return None

    def load_state(self, state: dict[str, Any] | None) -> None:  # noqa: B027 - optional hook, empty by default
        """Take back what :meth:`state` saved (None when the checkpoint holds nothing for this objective). Called
        after the model, optimizer and scheduler are restored and before the first step."""
