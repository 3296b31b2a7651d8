"""Hooks of the ift-arith plugin. Uses the public ``ift`` API (its trainer subclasses ``ift.SFTTrainer``),
plus the builtin Jinja renderer as the base of its template."""

from __future__ import annotations

import random
from collections.abc import Iterable
from importlib import resources
from typing import Any, Literal

from pydantic import Field

import ift
from ift.builtin_plugins.renderers import JinjaRenderer

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


class ArithmeticConfig(ift.ComponentConfig):
    n: int = Field(1000, gt=0)
    seed: int = 0
    max_operand: int = Field(20, gt=0)
    operations: list[Literal["+", "-", "*"]] = ["+", "-"]


class ArithmeticSource(ift.InstructionSource):
    """Questions like "What is 7 + 12?" with the exact answer."""

    name = "arithmetic"
    Config = ArithmeticConfig
    config: ArithmeticConfig

    def records(self) -> Iterable[ift.InstructionRecord]:
        rng = random.Random(self.config.seed)
        for i in range(self.config.n):
            a, b = rng.randint(0, self.config.max_operand), rng.randint(0, self.config.max_operand)
            op = rng.choice(self.config.operations)
            yield ift.InstructionRecord(
                id=f"arith-{self.config.seed}-{i}",
                source=self.source_name,
                task=f"arith{op}",
                messages=[ift.Message("user", f"What is {a} {op} {b}?"), ift.Message("assistant", str(OPS[op](a, b)))],
            )


class QARenderer(JinjaRenderer):
    """``Q: question`` then ``A: answer<eos>``."""

    name = "qa"

    def _read(self) -> tuple[str, str]:
        return resources.files("ift_arith").joinpath("qa.jinja").read_text("utf-8"), "ift-arith template 'qa'"


class NumericMatchConfig(ift.ComponentConfig):
    tolerance: float = Field(0.0, ge=0)


class NumericMatch(ift.Metric):
    """Share of answers that parse as a number within ``tolerance`` of the reference."""

    name = "numeric_match"
    Config = NumericMatchConfig
    config: NumericMatchConfig

    def compute(self, outputs: ift.EvalOutputs) -> float:
        if not outputs.references:
            return float("nan")
        hits = 0
        for prediction, reference in zip(outputs.predictions, outputs.references, strict=True):
            try:
                hits += abs(float(prediction.strip()) - float(reference)) <= self.config.tolerance
            except ValueError:
                pass
        return hits / len(outputs.references)


class SmoothedConfig(ift.SFTConfig):
    label_smoothing: float = Field(0.1, ge=0, lt=1)


class LabelSmoothingTrainer(ift.SFTTrainer):
    """Supervised fine-tuning whose loss mixes the target with a uniform distribution. Everything else
    (optimizer, schedule, accumulation, checkpoints) is the ``sft`` trainer's: only :meth:`loss` changes."""

    name = "sft-smoothed"
    Config = SmoothedConfig
    config: SmoothedConfig

    def loss(self, ctx: ift.TrainContext, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        """Summed smoothed cross-entropy over the positions the batch's ``loss_tokens`` counts (labels
        shifted by one, as in every causal LM), so the trainer's token normalisation stays exact."""
        import torch.nn.functional as F

        # Padding-free and packed batches carry position_ids instead of an attention mask.
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
        logits = model(**inputs, use_cache=False).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)),
            labels.reshape(-1),
            ignore_index=-100,
            reduction="sum",
            label_smoothing=self.config.label_smoothing,
        )
        return loss, batch["loss_tokens"]


@ift.hookimpl
def ift_register_sources() -> list[type]:
    return [ArithmeticSource]


@ift.hookimpl
def ift_register_renderers() -> list[type]:
    return [QARenderer]


@ift.hookimpl
def ift_register_metrics() -> list[type]:
    return [NumericMatch]


@ift.hookimpl
def ift_register_trainers() -> list[type]:
    return [LabelSmoothingTrainer]
