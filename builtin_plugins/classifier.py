"""The ``classifier`` model adapter: any ``AutoModelForSequenceClassification`` (BERT-style encoders such as
MiniLM, or decoders with a classification head), fine-tuned fully or with ``[model.peft]``.

The recipe's template renders the instruction and input; the prompt text (everything before the answer) is what
the encoder reads, and the record's ``label`` (its answer when it has no label) is the class. The label set is
``model.labels`` in that order, or the sorted labels of the training split. Derived labels are learned in
:meth:`ClassifierAdapter.prepare_data` and kept with the prepared data, so a run reusing cached data gets the same
label ids. ``generate`` returns the predicted label name, so the generation metrics (``accuracy``, ``f1``...) work
unchanged; the saved model carries ``id2label`` / ``label2id`` in its config.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

import ift
from ift.builtin_plugins import hf_loading, peft_methods

_UNLIMITED = 1_000_000  # tokenizers without a real limit report model_max_length as ~1e30


class ClassifierConfig(hf_loading.PretrainedModelConfig):
    """Which model to load and how (the keys shared with the other Hugging Face adapters), and the label set."""

    labels: list[str] | None = Field(
        None, description="Class names in id order; default: the sorted labels of the training split."
    )

    @field_validator("labels")
    @classmethod
    def _distinct_labels(cls, labels: list[str] | None) -> list[str] | None:
        if labels is None:
            return None
        cleaned = [label.strip() for label in labels]
        if any(not label for label in cleaned):
            raise ValueError("labels must not be empty strings")
        repeated = sorted(label for label, n in Counter(cleaned).items() if n > 1)
        if repeated:
            raise ValueError(f"labels must be distinct; repeated: {', '.join(repeated)}")
        if len(cleaned) < 2:
            raise ValueError("a classifier needs at least two labels")
        return cleaned


class ClassifierAdapter(ift.ModelAdapter):
    """Sequence classification: one label id per example, cross-entropy over the classification head's logits.
    A batch's ``loss_tokens`` is its number of labelled examples, so a trainer's loss is the mean over
    examples."""

    name = "classifier"
    #: Answers are label names, not generated tokens: inference commands apply no new-token budget.
    generates_text: ClassVar[bool] = False
    Config = ClassifierConfig
    config: ClassifierConfig
    supports_packing = False
    supports_gradient_checkpointing = True

    def enable_gradient_checkpointing(self, model: Any) -> None:
        hf_loading.enable_gradient_checkpointing(model)

    def __init__(self, config: ift.ComponentConfig, *, base_dir: Path) -> None:
        super().__init__(config, base_dir=base_dir)
        self.labels: list[str] | None = list(self.config.labels) if self.config.labels else None
        self.label_counts: dict[str, int] = {}
        self._tail = 0  # special tokens the tokenizer appends ([SEP]); truncation keeps them
        self._positions = _UNLIMITED  # the longest input the model accepts
        self._limit = _UNLIMITED  # the length examples were cut to (generation cuts prompts the same way)
        self._base_snapshot: Path | None = None  # a base built from a config, saved beside a PEFT adapter

    # --- labels ----------------------------------------------------------------------------------

    @property
    def label_origin(self) -> str:
        return "model.labels" if self.config.labels else "the training split"

    def prepare_data(
        self, train_records: Sequence[ift.InstructionRecord], *, max_length: int | None = None
    ) -> dict[str, Any]:
        counts = Counter(_label_of(record) for record in train_records)
        self.label_counts = dict(sorted(counts.items()))
        if self.config.labels is None:
            if len(counts) < 2:
                raise ift.DataError(
                    f"the training split has {len(counts)} distinct label(s) "
                    f"{sorted(counts)}; a classifier needs at least two"
                )
            self.labels = sorted(counts)
        if max_length is not None:  # what fit() cuts inputs to; kept so a cache hit generates from the same cut
            self._limit = min(max_length, self._positions)
        return {
            "labels": list(self.labels or []),
            "label_origin": self.label_origin,
            "train_label_counts": self.label_counts,
            "input_limit": self._limit,
        }

    def restore_data(self, state: dict[str, Any]) -> None:
        if self.config.labels is None:
            self.labels = [str(label) for label in state["labels"]]
        self.label_counts = dict(state.get("train_label_counts", {}))
        if isinstance(state.get("input_limit"), int):
            self._limit = min(state["input_limit"], self._positions)

    def _label_ids(self) -> dict[str, int]:
        if self.labels is None:
            raise ift.RunError(
                "the classifier's labels are not known yet: set model.labels, or let the run derive "
                "them from the training split before encoding (ModelAdapter.prepare_data)"
            )
        return {label: i for i, label in enumerate(self.labels)}

    # --- loading ---------------------------------------------------------------------------------

    def load_tokenizer(self) -> Any:
        tokenizer = hf_loading.open_tokenizer(self.config, self.base_dir)
        self._setup_tokenizer(tokenizer)
        self._positions = min(self._positions, self._config_positions())
        return tokenizer

    def _setup_tokenizer(self, tokenizer: Any) -> None:
        if tokenizer.eos_token is None and tokenizer.sep_token is not None:
            # Templates close an answer with eos_token, and an encoder has none; its separator ends a text. Only
            # the prompt reaches the encoder, so this changes no input, but it lets a template render an empty
            # answer (the prompt of `ift generate` / `ift chat`).
            tokenizer.eos_token = tokenizer.sep_token
        if tokenizer.pad_token is None:
            fallback = tokenizer.eos_token or tokenizer.sep_token or tokenizer.unk_token
            if fallback is None:
                raise ift.RunError("the tokenizer has no pad, eos, sep or unk token to pad batches with")
            tokenizer.pad_token = fallback  # padding is masked by the attention mask, never compared by id
        with_special = list(tokenizer("a")["input_ids"])
        plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
        start = next(
            (i for i in range(len(with_special) - len(plain) + 1) if with_special[i : i + len(plain)] == plain), None
        )
        self._tail = 0 if start is None else len(with_special) - start - len(plain)
        limit = getattr(tokenizer, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < _UNLIMITED:
            self._positions = min(self._positions, limit)

    def _config_positions(self) -> int:
        """The model's position limit from its config, read without loading weights."""
        from transformers import AutoConfig

        cfg = self.config
        try:
            if cfg.from_config is not None:
                options = dict(cfg.from_config)
                config = AutoConfig.for_model(options.pop("model_type"), **options)
            else:
                config = AutoConfig.from_pretrained(
                    hf_loading.resolve_path(self.base_dir, cfg.name_or_path or ""),
                    revision=cfg.revision,
                    trust_remote_code=cfg.trust_remote_code,
                )
        except (OSError, ValueError, TypeError, KeyError):
            return _UNLIMITED  # reported with its real cause when the model is loaded
        positions = getattr(config, "max_position_embeddings", None)
        return positions if isinstance(positions, int) and positions > 0 else _UNLIMITED

    def load_model(self, tokenizer: Any) -> Any:
        from transformers import AutoModelForSequenceClassification

        label2id = self._label_ids()
        heads = {
            "num_labels": len(label2id),
            "id2label": {i: label for label, i in label2id.items()},
            "label2id": label2id,
        }
        # A checkpoint's own head is replaced when its size differs from this label set.
        loaded = hf_loading.load_model(
            self.config,
            self.base_dir,
            AutoModelForSequenceClassification,
            tokenizer,
            task_type="SEQ_CLS",
            config_values=heads,
            ignore_mismatched_sizes=True,
        )
        self._base_snapshot = loaded.base_snapshot
        model = loaded.model
        if model.config.pad_token_id is None:  # decoder heads find each row's last token through it
            model.config.pad_token_id = tokenizer.pad_token_id
        return model

    def describe(self) -> dict[str, Any]:
        labels = self.labels or []
        described = hf_loading.describe_origin(
            self.config, "classifier", [f"{len(labels)} labels from {self.label_origin}"]
        )
        return {**described, "labels": labels, "label_origin": self.label_origin}

    # --- tokenizing ------------------------------------------------------------------------------

    def encode(
        self, tokenizer: Any, segments: Sequence[ift.Segment], *, source: str, record_id: str
    ) -> ift.EncodedExample:
        """The prompt (the text before the last trainable segment, as :meth:`ift.Renderer.prompt` cuts it) with
        the tokenizer's special tokens, and no label: :meth:`encode_record` adds the record's."""
        last = max((i for i, s in enumerate(segments) if s.trainable), default=len(segments))
        text = "".join(s.text for s in segments[:last])
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        return ift.EncodedExample(ids, [-100], source, record_id)

    def encode_record(
        self, tokenizer: Any, record: ift.InstructionRecord, segments: Sequence[ift.Segment]
    ) -> ift.EncodedExample:
        label = _label_of(record)
        label2id = self._label_ids()
        if label not in label2id:
            shown = ", ".join(self.labels or [])
            fix = (
                "add it to model.labels"
                if self.config.labels
                else "it does not occur in the training split, so the model cannot learn it; add training examples "
                "with it or list every label in model.labels"
            )
            raise ift.DataError(
                f"record {record.id!r} of source {record.source!r} has label {label!r}, which is "
                f"not one of the classifier's {len(label2id)} labels (from {self.label_origin}): "
                f"{shown}; {fix}"
            )
        example = self.encode(tokenizer, segments, source=record.source, record_id=record.id)
        example.labels = [label2id[label]]
        return example

    def fit(
        self, example: ift.EncodedExample, *, max_length: int, overlong: Literal["truncate", "drop"]
    ) -> tuple[ift.EncodedExample | None, str | None]:
        """Cut to ``max_length`` (and the model's position limit), keeping the trailing special tokens."""
        limit = self._limit = min(max_length, self._positions)
        if len(example.input_ids) <= limit:
            return example, None
        why = "max_length" if limit == max_length else f"the model's {limit} positions"
        if overlong == "drop":
            return None, f"longer than {why}"
        ids = _truncate(example.input_ids, limit, self._tail)
        return ift.EncodedExample(
            ids, list(example.labels), example.source, example.record_id, truncated=True
        ), f"truncated to {why}"

    # --- batches and loss ------------------------------------------------------------------------

    def collate(self, tokenizer: Any, examples: Sequence[ift.EncodedExample]) -> dict[str, Any]:
        import torch

        width = max(len(e.input_ids) for e in examples)
        input_ids = torch.full((len(examples), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(examples), width), dtype=torch.long)
        for i, e in enumerate(examples):
            input_ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
            attention[i, : len(e.input_ids)] = 1
        labels = torch.tensor([e.labels[0] if e.labels else -100 for e in examples], dtype=torch.long)
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": labels,
            "real_tokens": attention.sum(),
            "loss_tokens": (labels != -100).sum(),
            "num_examples": torch.tensor(len(examples)),
            "record_ids": [e.record_id for e in examples],
        }

    def _logits(self, model: Any, batch: dict[str, Any]) -> Any:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()

    def loss_sum(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        import torch.nn.functional as F

        labels = batch["labels"]
        loss = F.cross_entropy(self._logits(model, batch), labels, ignore_index=-100, reduction="sum")
        count = (labels != -100).sum()
        return loss, count

    def loss_by_example(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        import torch.nn.functional as F

        labels = batch["labels"]
        losses = F.cross_entropy(self._logits(model, batch), labels, ignore_index=-100, reduction="none")
        return losses, (labels != -100).long()

    def training_penalty(self, model: Any) -> Any | None:
        return peft_methods.training_penalty(model)

    def on_optimizer_step(self, model: Any, step: int, total_steps: int) -> None:
        peft_methods.on_optimizer_step(model, self.config.peft, step, total_steps)  # AdaLoRA's rank allocation

    # --- predicting and saving -------------------------------------------------------------------

    def generate(
        self,
        model: Any,
        tokenizer: Any,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        batch_size: int,
        stop: Sequence[str] = (),
    ) -> list[str]:
        """The predicted label name of each prompt (``max_new_tokens`` and ``stop`` do not apply)."""
        import torch

        names = self.labels or _config_labels(model)
        device = next(model.parameters()).device
        predictions: list[str] = []
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(prompts), batch_size):
                chunk = [
                    ift.EncodedExample(
                        _truncate(
                            self.encode(tokenizer, [ift.Segment(p, False)], source="", record_id="").input_ids,
                            self._limit,
                            self._tail,
                        ),
                        [-100],
                        "",
                        "",
                    )
                    for p in prompts[start : start + batch_size]
                ]
                batch = self.collate(tokenizer, chunk)
                with torch.no_grad():
                    logits = self._logits(model, {k: batch[k].to(device) for k in ("input_ids", "attention_mask")})
                predictions.extend(names[i] for i in logits.argmax(dim=-1).tolist())
        finally:
            model.train(was_training)
        return predictions

    def save(self, model: Any, tokenizer: Any, path: Path) -> None:
        """A full model folder (config with ``id2label`` / ``label2id``), or with ``[model.peft]`` the adapter plus
        the base's config.json carrying the labels, and ``base_model/`` when the base was built from a config."""
        hf_loading.save_model_folder(model, tokenizer, path, self._base_snapshot)
        if hasattr(model, "peft_config"):
            model.get_base_model().config.save_pretrained(str(path))  # the label set, for plain transformers + peft

    def load_trained(self, path: Path) -> tuple[Any, Any]:
        """Model and tokenizer from a folder :meth:`save` wrote, an ``ift export`` folder or its int8 copy; the
        labels come from the saved config."""
        from transformers import AutoModelForSequenceClassification

        model, tokenizer = hf_loading.load_saved_model(self.config, path, AutoModelForSequenceClassification)
        self._setup_tokenizer(tokenizer)
        self.labels = _config_labels(model)
        positions = getattr(model.config, "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 0:
            self._positions = min(self._positions, positions)
        self._limit = self._positions
        return model, tokenizer


def _label_of(record: ift.InstructionRecord) -> str:
    label = (record.label if record.label is not None else record.answer).strip()
    if not label:
        raise ift.DataError(
            f"record {record.id!r} of source {record.source!r} has no label (no 'label' field and an empty answer)"
        )
    return label


def _config_labels(model: Any) -> list[str]:
    config = model.config
    id2label = {int(i): str(name) for i, name in (config.id2label or {}).items()}
    return [id2label.get(i, f"LABEL_{i}") for i in range(int(config.num_labels))]


def _truncate(ids: list[int], limit: int, tail: int) -> list[int]:
    if len(ids) <= limit:
        return ids
    keep = tail if 0 < tail < limit else 0
    return ids[: limit - keep] + (ids[len(ids) - keep :] if keep else [])


@ift.hookimpl
def ift_register_model_adapters() -> list[type]:
    return [ClassifierAdapter]
