"""The ``distill`` trainer: knowledge distillation from a teacher model into the model being trained.

Per trainable position (label != -100, labels shifted by one as in every causal LM) the loss is
``(1 - alpha) * CE(label) + alpha * T^2 * KL(teacher_T || student_T)``, where ``x_T`` is the softmax of
logits divided by the temperature ``T``. The ``T^2`` factor keeps the soft-target gradients on the scale of
the hard-label ones as ``T`` grows (Hinton et al., 2015). Summed over positions, like every trainer's loss, so
the ``sft`` loop's token normalisation applies unchanged.

Only causal language models can be distilled this way: the adapter must be ``causal-lm``, a subclass of its
class, or an adapter class that declares ``causal = True`` (same next-token labels and an
``AutoModelForCausalLM`` teacher). Anything else is refused when the recipe is validated, and again at the start
of training for configs built in code. A ``teacher`` that is missing locally and looks like a path is refused
at the start of training, before anything is loaded, instead of being tried on the Hugging Face Hub.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import Field, ValidationInfo, model_validator

import ift

from .totals import RunningTotals

#: What a causal LM's forward pass takes from a batch (the rest are labels and facts about the batch).
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


def owners(batch: dict[str, Any]) -> Any:
    """The example each trainable position belongs to (padded rows: the row; packed rows: the batch's
    ``example_index``), or None where the batch does not say."""
    positions = batch["labels"][:, 1:] != -100
    if "example_index" in batch:
        return batch["example_index"][:, 1:][positions]
    if "position_ids" in batch:
        return None
    return positions.nonzero()[:, 0]


class DistillKeys(ift.ObjectiveConfig):
    """The distillation's keys (in ``[trainer]`` beside the loop's)."""

    teacher: str = Field(
        ...,
        min_length=1,
        description="The teacher: a model folder (full model or peft "
        "adapter), a run directory (its model/ is used), or a hub id.",
    )
    alpha: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Weight of the distillation term; 1 - alpha weighs the cross-entropy on the labels.",
    )
    temperature: float = Field(2.0, gt=0, description="Softmax temperature of both distributions in the KL.")
    teacher_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: the dtype of the student's weights."
    )

    @model_validator(mode="after")
    def _student_is_causal(self, info: ValidationInfo) -> DistillKeys:
        model = (info.context or {}).get("model")
        if model is not None and not is_causal(model.cls):
            raise ValueError(not_causal_message(model.name))
        return self


class DistillConfig(ift.SFTConfig, DistillKeys):
    """``[trainer]`` of ``distill``: the loop's keys and the distillation's."""


class Distillation(RunningTotals, ift.Objective):
    """``(1 - alpha) * CE + alpha * T^2 * KL(teacher_T || student_T)`` summed over the trained positions. The
    teacher is loaded in :meth:`setup` (unless one was given); the CE and KL totals are kept across a resume."""

    name = "distill"
    Config = DistillKeys
    config: DistillKeys
    teacher: Any = None
    teacher_path: str | None = None

    def setup(self, ctx: ift.TrainContext, model: Any) -> None:
        if not is_causal(type(ctx.adapter)):
            raise ift.RecipeError([ift.Problem("trainer.name", not_causal_message(ctx.adapter.name))])
        if self.teacher is None:
            self.teacher = self.load_teacher(ctx)
        self.start_totals()  # summed CE, summed KL, loss tokens

    def loss(self, model: Any, batch: dict[str, Any]) -> ift.LossTerms:
        import torch

        ce, kl, count = self.terms(model, batch)
        cfg = self.config
        self.add_totals(ce.sum(), kl.sum(), count)
        per_position = (1 - cfg.alpha) * ce + cfg.alpha * cfg.temperature**2 * kl
        figures = {"ce_loss": ce.detach().sum(), "kl": kl.detach().sum()}
        owner = owners(batch)
        if owner is None:
            return ift.LossTerms(per_position.sum(), figures=figures)
        # Summed per example, so the per-source training loss reports this objective.
        n = len(batch["record_ids"])
        sums = per_position.new_zeros(n).index_add(0, owner, per_position)
        counts = torch.zeros(n, dtype=torch.long, device=owner.device).index_add(0, owner, torch.ones_like(owner))
        return ift.LossTerms(sums.sum(), per_example=(sums, counts), figures=figures)

    def terms(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any, Any]:
        """Per trainable position (in batch order): cross-entropy and ``KL(teacher_T || student_T)``; and
        how many positions there are. Neither model computes logits beyond the trainable positions: both heads
        run on those positions' hidden states, in chunks recomputed in backward (:mod:`ift.head_loss`)."""
        import torch
        import torch.nn.functional as F

        from ift import head_loss

        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        inputs["use_cache"] = False
        labels = batch["labels"][:, 1:]
        positions = labels != -100
        length = batch["input_ids"].size(1)
        student = head_loss.head_inputs(model, inputs, positions, length=length)
        with torch.no_grad():
            teacher = head_loss.head_inputs(self.teacher, inputs, positions, length=length)
        if teacher.vocab != student.vocab:
            raise vocabulary_error(
                f"the teacher's logits have {teacher.vocab} entries per token, the student's {student.vocab}"
            )
        t = self.config.temperature

        def ce_and_kl(student_logits: Any, teacher_logits: Any, targets: Any) -> tuple[Any, Any]:
            ce = F.cross_entropy(student_logits, targets, reduction="none")
            kl = F.kl_div(
                F.log_softmax(student_logits / t, dim=-1),
                F.log_softmax(teacher_logits / t, dim=-1),
                log_target=True,
                reduction="none",
            ).sum(dim=-1)
            return ce, kl

        ce, kl = head_loss.map_chunks(ce_and_kl, [student, teacher], [labels[positions]])
        return ce, kl, positions.sum()

    def load_teacher(self, ctx: ift.TrainContext) -> Any:
        """The teacher on the student's device, in eval mode, without gradients; its vocabulary checked
        against the student's."""
        import torch

        cfg = self.config
        student = ctx.model
        reference = next(student.parameters())
        dtype = reference.dtype if cfg.teacher_dtype == "auto" else getattr(torch, cfg.teacher_dtype)
        path = teacher_folder(cfg.teacher, getattr(ctx.adapter, "base_dir", Path(".")))
        self.teacher_path = str(path) if path is not None else cfg.teacher
        ctx.progress.write(f"distill: loading the teacher {self.teacher_path}")
        teacher = _load(path, cfg.teacher, dtype)
        teacher.to(reference.device).eval().requires_grad_(False)
        if path is not None:
            check_tokenizer(path, ctx.tokenizer)
        student_out, teacher_out = _output_rows(student), _output_rows(teacher)
        if student_out is not None and teacher_out is not None and student_out != teacher_out:
            raise vocabulary_error(f"the teacher predicts {teacher_out} tokens, the student {student_out}")
        return teacher


class DistillTrainer(ift.ObjectiveTrainer):
    """Supervised fine-tuning that also matches a frozen teacher's token distributions: the loop with
    :class:`Distillation`, and its figures in the run's summary."""

    name = "distill"
    Config = DistillConfig
    config: DistillConfig
    objective_class = Distillation

    def train(self, ctx: ift.TrainContext) -> ift.TrainResult:
        distillation = self.distillation
        try:
            result = super().train(ctx)
        finally:
            distillation.teacher = None  # free its memory before the final evaluation and saving
        ce, kl, tokens = distillation.totals(3)
        cfg = self.config
        result.summary["distill"] = {
            "teacher": distillation.teacher_path,
            "alpha": cfg.alpha,
            "temperature": cfg.temperature,
            # token means over the micro-batches this process trained on
            "ce_loss": ce / tokens if tokens else None,
            "kl": kl / tokens if tokens else None,
        }
        return result

    @property
    def distillation(self) -> Distillation:
        return cast(Distillation, self.objective(None))

    # The objective's parts, reachable from the trainer (a notebook, a test).
    @property
    def teacher(self) -> Any:
        return self.distillation.teacher

    @teacher.setter
    def teacher(self, model: Any) -> None:
        self.distillation.teacher = model

    @property
    def teacher_path(self) -> str | None:
        return self.distillation.teacher_path

    def load_teacher(self, ctx: ift.TrainContext) -> Any:
        return self.distillation.load_teacher(ctx)

    def terms(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any, Any]:
        return self.distillation.terms(model, batch)

    _owners = staticmethod(owners)


Distillation.trainer = DistillTrainer


def is_causal(adapter_cls: type) -> bool:
    """Whether the adapter trains a causal LM the way this trainer assumes (labels predicting the next token,
    a teacher loadable with ``AutoModelForCausalLM``): the builtin ``causal-lm`` adapter or a subclass of it
    (a class registered as ``causal-lm`` in its ancestry; registered names are unique), or any adapter class
    declaring ``causal = True``. By name rather than by import, since trainers use only the public ``ift`` API."""
    return getattr(adapter_cls, "causal", False) is True or any(
        vars(cls).get("name") == "causal-lm" for cls in adapter_cls.__mro__
    )


def not_causal_message(adapter: str) -> str:
    return (
        f"'distill' needs a causal language model, but model.adapter is {adapter!r}: it compares next-token "
        "distributions position by position with an AutoModelForCausalLM teacher. Use adapter = "
        "'causal-lm' (or an adapter class declaring causal = True), or trainer.name = 'sft'"
    )


def vocabulary_error(detail: str) -> ift.RecipeError:
    return ift.RecipeError(
        [
            ift.Problem(
                "trainer.teacher",
                f"{detail}; distillation compares distributions "
                "token by token, so teacher and student need the same vocabulary",
            )
        ]
    )


def teacher_folder(spec: str, base_dir: Path) -> Path | None:
    """The folder ``trainer.teacher`` names (relative to the recipe's folder, else to the working
    directory; a run directory stands for its ``model/``), or None for a hub id."""
    candidate = Path(spec).expanduser()
    for path in [candidate] if candidate.is_absolute() else [base_dir / candidate, candidate]:
        if path.is_dir():
            if not _is_model_folder(path) and _is_model_folder(path / "model"):
                return path / "model"
            if not _is_model_folder(path):
                raise ift.RecipeError(
                    [
                        ift.Problem(
                            "trainer.teacher",
                            f"{path} is neither a model folder "
                            "(config.json or adapter_config.json) nor a run directory "
                            "with a model/ folder",
                        )
                    ]
                )
            return path
    if looks_local(spec, base_dir):
        raise ift.RecipeError(
            [ift.Problem("trainer.teacher", f"no folder {spec!r} (looked in {base_dir.resolve()} and {Path.cwd()})")]
        )
    return None


def looks_local(spec: str, base_dir: Path) -> bool:
    """Whether a name that exists nowhere locally is meant as a local path rather than a hub id, so that it
    fails at once instead of after the hub client's retries: it starts like a path (``./``, ``../``, ``/``,
    ``~``), has more parts than ``org/name``, starts with a folder that exists (``runs/quickstart`` while
    ``runs/`` is there), or the hub is switched off (``HF_HUB_OFFLINE``) and the local hub cache does not hold
    it either."""
    if spec.startswith(("./", "../", "/", "~", ".\\", "..\\")) or spec in (".", "..") or spec.count("/") > 1:
        return True
    first = Path(spec).parts[0] if Path(spec).parts else ""
    if "/" in spec and first and ((base_dir / first).is_dir() or Path(first).is_dir()):
        return True
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("1", "true", "yes", "on"):
        return False
    return not _in_hub_cache(spec)


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the hub cache holds ``repo_id``'s config (what an offline load would read)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return any(
            isinstance(try_to_load_from_cache(repo_id, name), str) for name in ("config.json", "adapter_config.json")
        )
    except Exception:  # an id the hub client rejects: not in the cache  # noqa: BLE001
        return False


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def _load(path: Path | None, spec: str, dtype: Any) -> Any:
    from transformers import AutoModelForCausalLM

    try:
        if path is not None and (path / "adapter_config.json").is_file():
            base = str(
                json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
            )
            if (path / base).is_dir():  # ift saves a base built from a config beside the adapter
                base = str(path / base)
            model = ift.load_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=dtype), path)
            return model.merge_and_unload()  # plain weights: the teacher only runs forward passes
        return AutoModelForCausalLM.from_pretrained(str(path) if path is not None else spec, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        text = str(exc).strip()
        raise ift.RecipeError(
            [
                ift.Problem(
                    "trainer.teacher",
                    f"cannot load the teacher {spec!r}: {text.splitlines()[0] if text else type(exc).__name__}",
                )
            ]
        ) from exc


def check_tokenizer(path: Path, tokenizer: Any) -> None:
    """Where the teacher folder carries a tokenizer, it must map every token to the same id as the
    student's (equal vocabulary sizes alone would let two different tokenizers through)."""
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return
    from transformers import AutoTokenizer

    try:
        theirs = AutoTokenizer.from_pretrained(str(path)).get_vocab()
    except (OSError, ValueError) as exc:
        raise ift.RecipeError(
            [ift.Problem("trainer.teacher", f"cannot read the tokenizer in {path}: {str(exc).strip().splitlines()[0]}")]
        ) from exc
    ours = tokenizer.get_vocab()
    if theirs != ours:
        differ = sorted(t for t in set(ours) | set(theirs) if ours.get(t) != theirs.get(t))
        raise vocabulary_error(
            f"the teacher's tokenizer ({len(theirs)} tokens) differs from the student's "
            f"({len(ours)} tokens) in {len(differ)} tokens, e.g. {differ[:5]}"
        )


def _output_rows(model: Any) -> int | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if weight is not None else None
