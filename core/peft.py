"""PEFT methods: a plugin kind. A plugin returns :class:`PeftMethod` subclasses from ``ift_register_peft_methods``;
a recipe picks one by name with ``[model.peft] method = "<name>"``, and the table's other keys are validated by
the method's ``Config`` (a :class:`PeftMethodConfig`), as for every component.

A method turns its config into a ``peft`` config object (``peft_config``); the model adapter wraps the model with
``peft.get_peft_model`` and saves it with ``save_pretrained``, so the run folder loads with plain
``PeftModel.from_pretrained`` whatever the method. Optional: model checks before wrapping, work after it
(``after_wrap``), a regulariser added to the training loss (``training_penalty``), per-update work
(``on_optimizer_step``), and ``packing = False`` for methods that cannot take several examples per row.

Nothing here imports torch or peft.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from pydantic import PrivateAttr

from ift.components import GUARDED, Component, Origin, origin_of, set_origin
from ift.config import ComponentConfig


class PeftMethodConfig(ComponentConfig):
    """Base of a PEFT method's ``Config``: the ``[model.peft]`` table. ``method`` is the registered name (the
    recipe's ``method`` key); subclasses add the method's own keys (unknown keys are recipe errors at
    ``model.peft.<key>``)."""

    method: str = ""
    #: the method class and the plugin providing it, set when the table is validated (not dumped)
    _owner: Any = PrivateAttr(default=None)

    def method_class(self) -> type[PeftMethod] | None:
        """The :class:`PeftMethod` this table was validated for (None for a config built by hand)."""
        return self._owner[0] if self._owner is not None else None

    def provided_by(self) -> dict[str, str] | None:
        """``{"plugin", "distribution", "version"}`` of the plugin that provides the method, or None."""
        return dict(self._owner[1]) if self._owner is not None else None


class PeftMethod(Component):
    """A parameter-efficient fine-tuning method, used by every ``peft``-based model adapter.

    Subclasses set ``name`` (the recipe's ``method``), ``Config`` (a :class:`PeftMethodConfig` subclass) and
    implement :meth:`peft_config`; ``self.config`` is the validated ``[model.peft]`` table."""

    Config: ClassVar[type[ComponentConfig]] = PeftMethodConfig

    def __init__(self, config: ComponentConfig) -> None:
        # A table the recipe validated knows its plugin: failures in the method's own code then name it, as for
        # every component (see ift.Component). peft_config is not guarded: its ValueError / TypeError mean "cannot
        # be applied to this model", which apply_peft reports at the recipe key.
        provider = config.provided_by() if isinstance(config, PeftMethodConfig) else None
        if provider is not None and origin_of(config) is None:
            set_origin(
                config,
                Origin(
                    provider["plugin"],
                    provider["distribution"],
                    provider["version"],
                    "PEFT method",
                    getattr(config, "method", self.name),
                    "model.peft",
                ),
            )
        super().__init__(config)

    #: A short human name ("LoRA"), used in messages; defaults to ``name``.
    label: ClassVar[str] = ""
    #: Whether padding-free / packed batches (several examples per row, positions restarting) work with it.
    packing: ClassVar[bool] = True

    def peft_config(self, model: Any, task_type: str, head: list[str]) -> Any:
        """The ``peft`` config object (``peft.LoraConfig(...)`` and the like) for ``model``. ``task_type`` is
        peft's (``CAUSAL_LM``, ``SEQ_2_SEQ_LM``, ``SEQ_CLS``); ``head`` lists the modules a classification model
        trains fully: pass them as ``modules_to_save`` and keep the adapter off them."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for the manifest and the run's console output."""
        return f"{self.label or self.name}: " + ", ".join(
            f"{k}={v}" for k, v in self.config.model_dump().items() if k != "method"
        )

    def check(self, model: Any, task_type: str, head: list[str]) -> None:
        """Refuse a model the method cannot be applied to (raise :class:`ift.RecipeError` naming
        ``model.peft.<key>``) before it is wrapped. The default checks nothing."""

    def after_wrap(self, model: Any, *, task_type: str, tokenizer: Any = None) -> Any:
        """Work on the wrapped ``peft`` model (initialise weights, add hooks); returns the model to train."""
        return model

    def training_penalty(self, model: Any) -> Any:
        """A regulariser to add to the training loss (a scalar tensor, mean per trainable token), or None. Called
        in training mode only, on the wrapped model."""
        return None

    def on_optimizer_step(self, model: Any, step: int, total_steps: int) -> None:
        """Work after each optimizer update (``step`` counts from 1 up to ``total_steps``)."""


GUARDED[PeftMethod] = ("check", "after_wrap", "training_penalty", "on_optimizer_step", "describe")


@contextmanager
def _peft_wrapping() -> Iterator[None]:
    """Wrapping a transformers model in peft (or reloading an adapter) without transformers' FutureWarning about
    ``is_gradient_checkpointing``: peft reads that attribute, transformers 5.x renamed it, and nothing a user can
    change would avoid it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*deprecated", category=FutureWarning)
        yield


def wrap_peft_model(model: Any, peft_config: Any, **kwargs: Any) -> Any:
    """``peft.get_peft_model(model, peft_config, **kwargs)``, without transformers' FutureWarning about
    ``is_gradient_checkpointing`` (peft reads the attribute transformers 5.x renamed; nothing a user can change)."""
    from peft import get_peft_model

    with _peft_wrapping():
        return get_peft_model(model, peft_config, **kwargs)


def load_peft_model(base: Any, folder: str | os.PathLike[str], **kwargs: Any) -> Any:
    """``peft.PeftModel.from_pretrained(base, folder, **kwargs)`` (a saved adapter on its base model, such as a
    PEFT run's ``model/`` folder), without the warning :func:`wrap_peft_model` leaves out."""
    from peft import PeftModel

    with _peft_wrapping():
        return PeftModel.from_pretrained(base, str(folder), **kwargs)
