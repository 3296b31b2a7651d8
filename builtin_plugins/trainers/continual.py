"""The ``continual`` trainer: train on a new task while limiting forgetting of an earlier run's tasks.

The earlier run is named by its run directory (``previous_run``). Its ``data/train.jsonl`` supplies replayed
examples (a seeded sample, mixed evenly into this run's training examples, keeping their source names; a
sampled record whose content equals one of this run's eval records is left out, or the held-out split would be
trained on) and the data of an optional EWC penalty; its ``data/eval.jsonl`` is evaluated with this recipe's
metrics before and after training, so forgetting is measured, not guessed. The model to continue from is the recipe's
``[model]`` as usual, normally ``name_or_path = "<previous_run>/model"``; anything else is warned about.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from pydantic import Field, model_validator

import ift


class ContinualKeys(ift.ObjectiveConfig):
    """The continual trainer's keys (in ``[trainer]`` beside the loop's)."""

    previous_run: str = Field(
        ...,
        min_length=1,
        description="Run directory of the earlier task (relative to "
        "the recipe's folder, else to the working directory).",
    )
    replay_fraction: float | None = Field(
        None, gt=0, le=1, description="Share of the previous run's training records to replay (seeded sample)."
    )
    replay_examples: int | None = Field(
        None,
        ge=0,
        description="Number of previous-run training records to replay (seeded sample; at most all of them).",
    )
    ewc_lambda: float = Field(
        0.0,
        ge=0,
        description="EWC strength: lambda/2 * sum F_i (theta_i - theta*_i)^2 "
        "added to the per-token loss; 0 turns EWC off.",
    )
    ewc_examples: int = Field(
        64, gt=0, description="Previous-run training records (seeded sample) that estimate the diagonal Fisher."
    )
    evaluate_previous: bool = Field(
        True, description="Evaluate the previous run's eval records before and after training."
    )

    @model_validator(mode="after")
    def _consistent(self) -> ContinualKeys:
        if self.replay_fraction is not None and self.replay_examples is not None:
            raise ValueError("set trainer.replay_fraction or trainer.replay_examples, not both")
        if "ewc_examples" in self.model_fields_set and self.ewc_lambda == 0:
            raise ValueError("trainer.ewc_examples only applies with trainer.ewc_lambda > 0")
        return self


class ContinualConfig(ift.SFTConfig, ContinualKeys):
    """``[trainer]`` of ``continual``: the loop's keys and the continual trainer's."""


class ElasticWeightConsolidation(ift.NLL):
    """The ``sft`` loss plus, once anchored (:meth:`anchor`), the EWC penalty
    ``ewc_lambda / 2 * sum_i F_i (theta_i - theta*_i)^2`` as the extra term ``ewc``.

    The term is ``penalty * units`` of each micro-batch: the loop divides the step's summed terms by the step's
    loss tokens, so the penalty enters the per-token objective exactly once per update, whatever the
    accumulation or the number of processes. That is also the scale its Fisher is measured on (squared
    gradients of per-token mean losses, see :func:`diagonal_fisher`). The per-source training loss stays the
    cross-entropy; the penalty is logged as ``ewc``."""

    name = "continual"
    Config = ContinualKeys
    config: ContinualKeys
    #: (parameter, its Fisher diagonal, its anchored value) per trainable parameter; empty: no penalty.
    ewc: list[tuple[Any, Any, Any]]

    def __init__(self, config: ContinualKeys) -> None:
        super().__init__(config)
        self.ewc = []

    def anchor(
        self, model: Any, adapter: ift.ModelAdapter, tokenizer: Any, examples: list[ift.EncodedExample]
    ) -> float:
        """Anchor the penalty at ``model``'s current weights with the diagonal Fisher estimated on
        ``examples``; returns the Fisher's sum."""
        fisher = diagonal_fisher(model, adapter, tokenizer, examples)
        self.ewc = [(p, fisher[n], p.detach().clone()) for n, p in model.named_parameters() if n in fisher]
        return float(sum(float(f.sum()) for f in fisher.values()))

    def penalty(self) -> Any:
        """``ewc_lambda / 2 * sum_i F_i (theta_i - theta*_i)^2`` over the anchored parameters."""
        total = sum(((param.float() - anchor.float()).pow(2) * fisher).sum() for param, fisher, anchor in self.ewc)
        return self.config.ewc_lambda / 2 * total

    def loss(self, model: Any, batch: dict[str, Any]) -> ift.LossTerms:
        terms = super().loss(model, batch)
        if self.ewc:
            terms.extra["ewc"] = self.penalty() * self.units(batch)
        return terms


class ContinualTrainer(ift.ObjectiveTrainer):
    """``sft`` on the new data plus replayed old examples (:meth:`training_examples`), with an optional EWC
    penalty (:class:`ElasticWeightConsolidation`), reporting the old tasks' metrics before and after."""

    name = "continual"
    Config = ContinualConfig
    config: ContinualConfig
    objective_class = ElasticWeightConsolidation
    replayed: list[ift.EncodedExample] | None = None  # set by prepare()

    def train(self, ctx: ift.TrainContext) -> ift.TrainResult:
        _, report = self.prepare(ctx)
        old_eval = self.previous_records("eval")
        cfg = self.config
        if cfg.evaluate_previous and old_eval:
            report["previous_tasks"] = {
                "before": ctx.evaluate_records(
                    ctx.model,
                    old_eval,  # type: ignore[misc]
                    "previous-tasks-before",
                )
            }
            ctx.progress.stage("training")  # the evaluation showed its own stage on the run's display
        elif cfg.evaluate_previous:
            report["previous_tasks"] = {"note": f"{self.previous / 'data' / 'eval.jsonl'} holds no records"}
        result = super().train(ctx)
        if cfg.evaluate_previous and old_eval:
            tasks = report["previous_tasks"]
            tasks["after"] = ctx.evaluate_records(result.model, old_eval, "previous-tasks-after")  # type: ignore[misc]
            tasks["change"] = metric_change(tasks["before"], tasks["after"])
        if self.ewc:
            report["ewc"]["final_penalty"] = float(self.ewc_penalty().detach())
        result.summary["continual"] = report
        return result

    def training_examples(self, ctx: ift.TrainContext) -> Sequence[ift.EncodedExample]:
        """This run's training examples with the replayed ones (from :meth:`prepare`) spread evenly through
        them; they keep their source names, so the per-source training loss covers both tasks."""
        return interleave(ctx.train_examples, self.replayed) if self.replayed else ctx.train_examples

    def prepare(self, ctx: ift.TrainContext) -> tuple[ift.TrainContext, dict[str, Any]]:
        """Check the previous run, encode the replayed records, anchor the EWC penalty; return what to report,
        after a view of ``ctx`` whose ``train_examples`` are :meth:`training_examples` (the context itself is
        not changed: training reads the examples through that method)."""
        cfg = self.config
        if ctx.encode_records is None or ctx.evaluate_records is None:
            raise ift.RunError(
                "the continual trainer needs TrainContext.encode_records and evaluate_records, "
                "which this ift version does not provide"
            )
        self.previous = find_previous_run(cfg.previous_run, getattr(ctx.adapter, "base_dir", Path(".")))
        report: dict[str, Any] = {"previous_run": str(self.previous)}
        notes = model_origin_notes(ctx.adapter, self.previous)
        old_train = self.previous_records("train")
        new_sources = {e.source for e in ctx.train_examples}
        if clash := sorted(new_sources & {r.source for r in old_train}):
            notes.append(
                f"previous-run source name(s) {clash} are also sources of this run: per-source figures "
                "mix old and new examples under one name"
            )
        for note in notes:
            ctx.progress.write(f"continual: {note}")
        if notes:
            report["warnings"] = notes

        chosen = replay_sample(old_train, fraction=cfg.replay_fraction, count=cfg.replay_examples, seed=ctx.seed)
        # The split kept this run's eval records out of its training data; replay must not bring them back.
        held_out = {r.content_key() for r in ctx.eval_records}
        leaking = [r for r in chosen if r.content_key() in held_out]
        chosen = [r for r in chosen if r.content_key() not in held_out]
        self.replayed = ctx.encode_records(chosen) if chosen else []
        report["replay"] = {
            "records": len(chosen),
            "examples": len(self.replayed),
            "dropped_in_eval_split": len(leaking),
            "of_previous_train_records": len(old_train),
            "by_source": dict(sorted(Counter(e.source for e in self.replayed).items())),
        }
        if len(self.replayed) < len(chosen):
            notes.append(
                f"{len(chosen) - len(self.replayed)} replayed record(s) were dropped while encoding "
                f"(trainer.max_length = {cfg.max_length}, trainer.overlong = {cfg.overlong!r})"
            )
            ctx.progress.write(f"continual: {notes[-1]}")
            report["warnings"] = notes
        if leaking:
            ctx.progress.write(
                f"continual: {len(leaking)} sampled previous-run record(s) equal records of this "
                "run's eval split and were not replayed (they would leak into training)"
            )

        if cfg.ewc_lambda > 0:
            sample = random.Random(f"continual-ewc-{ctx.seed}").sample(old_train, min(cfg.ewc_examples, len(old_train)))
            examples = ctx.encode_records(sample)
            ctx.progress.write(f"continual: estimating the Fisher on {len(examples)} previous-run examples")
            fisher_sum = self.elastic.anchor(ctx.model, ctx.adapter, ctx.tokenizer, examples)
            report["ewc"] = {"lambda": cfg.ewc_lambda, "fisher_examples": len(examples), "fisher_sum": fisher_sum}
        return dataclasses.replace(ctx, train_examples=list(self.training_examples(ctx))), report

    def previous_records(self, split: str) -> list[ift.InstructionRecord]:
        path = self.previous / "data" / f"{split}.jsonl"
        if not path.is_file():
            if split == "eval":
                return []
            raise ift.RecipeError(
                [
                    ift.Problem(
                        "trainer.previous_run",
                        f"{self.previous} has no data/{split}.jsonl "
                        "(every ift run writes it; was this run directory made by an "
                        "older ift, or did the run fail before training?)",
                    )
                ]
            )
        return read_records(path)

    # The objective's parts, reachable from the trainer (a notebook, a test).
    @property
    def elastic(self) -> ElasticWeightConsolidation:
        return cast(ElasticWeightConsolidation, self.objective(None))

    @property
    def ewc(self) -> list[tuple[Any, Any, Any]]:
        return self.elastic.ewc

    def ewc_penalty(self) -> Any:
        """``ewc_lambda / 2 * sum_i F_i (theta_i - theta*_i)^2`` over the trainable parameters."""
        return self.elastic.penalty()


ElasticWeightConsolidation.trainer = ContinualTrainer


def diagonal_fisher(
    model: Any, adapter: ift.ModelAdapter, tokenizer: Any, examples: list[ift.EncodedExample]
) -> dict[str, Any]:
    """Empirical diagonal Fisher of the trainable parameters: the mean over examples of the squared gradient
    of each example's per-token mean loss, at the model's current weights (eval mode: no dropout)."""
    import torch

    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params}
    device = next(model.parameters()).device
    used = 0
    was_training = model.training
    model.eval()
    try:
        for example in examples:
            batch = adapter.collate(tokenizer, [example])
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
            loss_sum, count = adapter.loss_sum(model, batch)
            if int(count) == 0:
                continue
            grads = torch.autograd.grad(loss_sum / count, [p for _, p in params], allow_unused=True)
            for (name, _), grad in zip(params, grads, strict=True):
                if grad is not None:
                    fisher[name] += grad.float().pow(2)
            used += 1
    finally:
        model.train(was_training)
    for value in fisher.values():
        value /= max(used, 1)
    return fisher


# --- the previous run ----------------------------------------------------------------------------


def find_previous_run(spec: str, base_dir: Path) -> Path:
    """``trainer.previous_run`` resolved like ``model.name_or_path``: relative to the recipe's folder when that
    exists, else to the working directory."""
    path = Path(spec).expanduser()
    candidates = [path] if path.is_absolute() else [base_dir / path, path]
    found = next((c for c in candidates if c.is_dir()), None)
    if found is None:
        where = str(path.parent.resolve()) if path.is_absolute() else f"{base_dir.resolve()} and {Path.cwd()}"
        raise ift.RecipeError([ift.Problem("trainer.previous_run", f"no folder {spec!r} (looked in {where})")])
    if not (found / "data").is_dir():
        raise ift.RecipeError(
            [
                ift.Problem(
                    "trainer.previous_run",
                    f"{found} has no data/ folder: it is not a run directory, or its run stopped before preparing data",
                )
            ]
        )
    return found


def model_origin_notes(adapter: Any, previous: Path) -> list[str]:
    """Warnings when the recipe's model is not the previous run's trained model."""
    expected = previous / "model"
    name = getattr(adapter.config, "name_or_path", None)
    hint = f"set model.name_or_path = {str(expected)!r} to continue from the previous run's weights"
    if name is None:
        return [f"the model is not loaded from a folder (model.name_or_path is unset); {hint}"]
    given = Path(name).expanduser()
    base_dir = getattr(adapter, "base_dir", Path("."))
    where = given if given.is_absolute() else (base_dir / given if (base_dir / given).exists() else given)
    notes = []
    if not where.exists() or not expected.exists() or where.resolve() != expected.resolve():
        notes.append(
            f"model.name_or_path is {name!r}, not the previous run's model ({expected}): training "
            f"starts from those weights (and EWC anchors to them); {hint}"
        )
    elif (expected / "adapter_config.json").is_file():
        notes.append(
            f"{expected} holds a peft adapter, not full weights: merge it into its base first and "
            "point model.name_or_path at the merged folder"
        )
    return notes


def read_records(path: Path) -> list[ift.InstructionRecord]:
    """InstructionRecords from a run's ``data/*.jsonl`` (rows of ``InstructionRecord.to_dict()``)."""
    records = []
    with path.open(encoding="utf-8") as rows:
        for number, line in enumerate(rows, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                records.append(
                    ift.InstructionRecord(
                        id=str(row["id"]),
                        source=str(row["source"]),
                        messages=[ift.Message(str(m["role"]), str(m["content"])) for m in row["messages"]],
                        task=row.get("task"),
                        label=row.get("label"),
                        choices=row.get("choices"),
                        metadata=dict(row.get("metadata") or {}),
                    )
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise ift.DataError(
                    f"{path}:{number}: not an InstructionRecord row ({type(exc).__name__}: {exc})"
                ) from None
    return records


def replay_sample(
    records: list[ift.InstructionRecord], *, fraction: float | None, count: int | None, seed: int
) -> list[ift.InstructionRecord]:
    """A seeded sample of ``records``, in their original order. The same seed and records give the same
    sample; a larger count keeps every record a smaller one chose (it extends the same permutation)."""
    if fraction is not None:
        count = round(fraction * len(records))
    count = min(count or 0, len(records))
    order = list(range(len(records)))
    random.Random(f"continual-replay-{seed}").shuffle(order)
    return [records[i] for i in sorted(order[:count])]


def interleave(new: Sequence[Any], old: Sequence[Any]) -> list[Any]:
    """Both lists merged with the old items spread evenly through the new ones (matters when
    ``trainer.shuffle = false``: the replayed examples do not all come last)."""
    keyed = [((i + 0.5) / len(new), 0, x) for i, x in enumerate(new)] + [
        ((j + 0.5) / len(old), 1, x) for j, x in enumerate(old)
    ]
    return [x for _, _, x in sorted(keyed, key=lambda item: item[:2])]


def metric_change(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """``after - before`` for every overall metric both evaluations have (negative loss change: better)."""
    old, new = before.get("overall", {}), after.get("overall", {})
    return {
        k: round(new[k] - old[k], 6)
        for k in old
        if k != "n" and isinstance(old[k], int | float) and isinstance(new.get(k), int | float)
    }
