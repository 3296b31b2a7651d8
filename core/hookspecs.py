# mypy: disable-error-code="empty-body"
# (hook specifications declare signatures only: pluggy never calls their bodies, so they have none.)
"""Every hook ift calls, in one place. Plugins implement them with ``@ift.hookimpl``.

Registration hooks return component classes (never instances, never one call per example): each class
carries its own ``name`` and ``Config``. Lifecycle hooks observe a run; their return values are ignored.

``HOOK_API_VERSION`` changes when a hook's signature changes incompatibly.
"""

from __future__ import annotations

from typing import Any

import pluggy

HOOK_API_VERSION = 1

hookspec = pluggy.HookspecMarker("ift")
hookimpl = pluggy.HookimplMarker("ift")


# --- registration ------------------------------------------------------------------------------


@hookspec
def ift_register_sources() -> list[type]:
    """Return instruction source classes (subclasses of ``ift.InstructionSource``).

    A recipe uses one with ``[[data]] source = "<name>"``; the table's other keys are validated by the
    class's ``Config``. Called once per run; every plugin's list is collected.
    """


@hookspec
def ift_register_transforms() -> list[type]:
    """Return transform classes (subclasses of ``ift.Transform``), used by ``[[transforms]] name = ...``.

    A transform receives the whole record list and must count every record it drops by reason.
    """


@hookspec
def ift_register_renderers() -> list[type]:
    """Return renderer classes (subclasses of ``ift.Renderer``), used by ``[template] name = ...``.

    A renderer turns a record into text segments, each marked trainable or not.
    """


@hookspec
def ift_register_model_adapters() -> list[type]:
    """Return model adapter classes (subclasses of ``ift.ModelAdapter``), used by ``[model] adapter``.

    An adapter loads a model family, tokenizes segments into ids and labels, generates and saves.
    """


@hookspec
def ift_register_trainers() -> list[type]:
    """Return trainer classes (subclasses of ``ift.Trainer``), used by ``[trainer] name = ...``.

    The class's ``Config`` must subclass ``ift.TrainerConfig``.
    """


@hookspec
def ift_register_objectives() -> list[type]:
    """Return training objective classes (subclasses of ``ift.Objective``). Each one is also a trainer of the same
    name on ift's training loop: ``[trainer] name = "<name>"``, with the loop's keys and the objective's own."""


@hookspec
def ift_register_peft_methods() -> list[type]:
    """Return PEFT method classes (subclasses of ``ift.PeftMethod``), used by ``[model.peft] method = "<name>"``.

    The table's other keys are validated by the class's ``Config`` (a subclass of ``ift.PeftMethodConfig``); the
    method returns the ``peft`` config object, so the saved adapter loads with plain ``peft``.
    """


@hookspec
def ift_register_metrics() -> list[type]:
    """Return metric classes (subclasses of ``ift.Metric``), used by ``[eval] metrics = [...]``."""


@hookspec
def ift_register_similarity_backends() -> list[type]:
    """Return similarity backend classes (subclasses of ``ift.SimilarityBackend``), used by retrieval-based
    sources with ``backend = "<name>"`` (options validated by the class's ``Config``)."""


@hookspec
def ift_register_commands(cli: Any) -> None:
    """Add subcommands to the ``ift`` click group ``cli`` (``cli.add_command(...)``)."""


@hookspec
def ift_prepare_jinja_env(env: Any) -> None:
    """Add filters, tests or globals to the sandboxed Jinja2 environment used by text templates."""


# --- lifecycle ---------------------------------------------------------------------------------


@hookspec
def ift_data_prepared(run_dir: str, train_records: list[Any], eval_records: list[Any]) -> None:
    """Called once per run with the data it was trained on, after training (so reports never delay the
    first step): the whole lists after cleaning and the split, weights applied (a record repeated by its
    source's weight appears repeatedly). Write data reports into ``run_dir`` here; files named
    ``data_report*`` are cached with the prepared data and restored when a later run reuses it."""


@hookspec
def ift_run_start(run_dir: str, resolved: dict[str, Any]) -> None:
    """Called once when a run starts, after the run directory is created and the recipe resolved."""


@hookspec
def ift_step_end(run_dir: str, event: dict[str, Any]) -> None:
    """Called at every logged training step with the same dict written to ``events.jsonl``."""


@hookspec
def ift_evaluate_end(run_dir: str, stage: str, metrics: dict[str, Any]) -> None:
    """Called after each evaluation; ``stage`` is "baseline", "step-<n>" or "final"."""


@hookspec
def ift_run_end(run_dir: str, status: str, metrics: dict[str, Any]) -> None:
    """Called once when a run ends; ``status`` is "completed" or "failed"."""
