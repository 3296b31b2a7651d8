"""The ``causal-lm`` model adapter: any ``AutoModelForCausalLM`` by hub id or local path, or one built
from a config (tests and the quickstart), fully fine-tuned or with LoRA through ``peft``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ift
from ift.builtin_plugins import hf_loading, packed_attention, peft_methods, token_labels


class CausalLMConfig(hf_loading.PretrainedModelConfig):
    """Which model to load and how (the keys are shared with the other Hugging Face adapters)."""


class CausalLMAdapter(ift.ModelAdapter):
    """Decoder-only language models. Loss is taken on trainable segments only; the token ids used for
    training are exactly those of tokenizing the whole rendered text."""

    name = "causal-lm"
    Config = CausalLMConfig
    config: CausalLMConfig

    # --- loading -------------------------------------------------------------------------------

    def load_tokenizer(self) -> Any:
        tokenizer = hf_loading.load_tokenizer(
            self.config,
            self.base_dir,
            fast_needed_for=("causal-lm (character offsets are used to place the trainable boundary exactly)"),
        )
        self._adds_bos = _adds_bos(tokenizer)
        return tokenizer

    def load_model(self, tokenizer: Any) -> Any:
        from transformers import AutoModelForCausalLM

        loaded = hf_loading.load_model(
            self.config, self.base_dir, AutoModelForCausalLM, tokenizer, task_type="CAUSAL_LM"
        )
        self._base_snapshot = loaded.base_snapshot
        model = loaded.model
        if self.config.attn_implementation is None and next(model.parameters()).device.type == "cpu":
            # no variable-length attention kernel on a CPU: packed rows are attended one example at a time
            packed_attention.use_for(model)
        return model

    def describe(self) -> dict[str, Any]:
        return hf_loading.describe_origin(self.config, base_dir=self.base_dir)

    # --- tokenizing ----------------------------------------------------------------------------

    def encode(
        self, tokenizer: Any, segments: Sequence[ift.Segment], *, source: str, record_id: str
    ) -> ift.EncodedExample:
        """Ids of the whole rendered text (as ``apply_chat_template(..., tokenize=True)`` gives them) and labels
        from each token's exact character span (:func:`token_labels.labels_from_offsets`). When the tokenizer adds a
        BOS by itself and the text does not start with one (leading whitespace ignored), it is prepended, untrained,
        as ``tokenizer(text)`` would; a template that writes its own BOS never gets a second one."""
        text, trainable = token_labels.trainable_mask(segments)
        ids, offsets = token_labels.encode_with_offsets(tokenizer, text)
        return self._example(tokenizer, text, trainable, ids, offsets, source, record_id)

    def encode_many(
        self, tokenizer: Any, items: Sequence[tuple[ift.InstructionRecord, Sequence[ift.Segment]]]
    ) -> list[ift.EncodedExample]:
        """One batched tokenizer call for all the texts (the fast tokenizer works through them in Rust), then
        the labelling of :meth:`encode` on the whole batch at once (:func:`token_labels.batch_labels`). A
        subclass that changes ``encode`` or ``encode_record`` is encoded one example at a time through them."""
        if (
            type(self).encode is not CausalLMAdapter.encode
            or type(self).encode_record is not ift.ModelAdapter.encode_record
            or not items
        ):
            return super().encode_many(tokenizer, items)
        masks = [token_labels.trainable_mask(segments) for _, segments in items]
        batch = token_labels.batch_labels(tokenizer, [text for text, _ in masks], [m for _, m in masks])
        adds_bos = getattr(self, "_adds_bos", False)
        bos = (tokenizer.bos_token or "\0") if adds_bos else ""
        out = []
        for i, ((record, _), (text, _)) in enumerate(zip(items, masks, strict=True)):
            input_ids, labels, straddling = batch.example(i)
            if adds_bos and not text.lstrip().startswith(bos):
                input_ids.insert(0, tokenizer.bos_token_id)
                labels.insert(0, -100)
            out.append(ift.EncodedExample(input_ids, labels, record.source, record.id, straddling=straddling))
        return out

    def _example(
        self,
        tokenizer: Any,
        text: str,
        trainable: bytearray,
        ids: Sequence[int],
        offsets: Sequence[tuple[int, int]],
        source: str,
        record_id: str,
    ) -> ift.EncodedExample:
        result = token_labels.labels_from_offsets(ids, offsets, trainable)
        input_ids, labels = list(ids), result.labels
        if getattr(self, "_adds_bos", False) and not text.lstrip().startswith(tokenizer.bos_token or "\0"):
            input_ids.insert(0, tokenizer.bos_token_id)
            labels.insert(0, -100)
        return ift.EncodedExample(input_ids, labels, source, record_id, straddling=len(result.straddling))

    supports_preference = True  # each completion encoded as a sequence; the core joins a pair (docs/preference.md)

    @property
    def supports_packing(self) -> bool:  # type: ignore[override]
        # Virtual-token methods (prefix / prompt tuning) assume one sequence per row.
        return peft_methods.supports_packing(self.config.peft)

    supports_gradient_checkpointing = True

    def enable_gradient_checkpointing(self, model: Any) -> None:
        hf_loading.enable_gradient_checkpointing(model)

    def on_optimizer_step(self, model: Any, step: int, total_steps: int) -> None:
        peft_methods.on_optimizer_step(model, self.config.peft, step, total_steps)

    def collate(self, tokenizer: Any, examples: Sequence[ift.EncodedExample]) -> dict[str, Any]:
        import torch

        width = max(len(e.input_ids) for e in examples)
        pad = tokenizer.pad_token_id
        input_ids = torch.full((len(examples), width), pad, dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        attention = torch.zeros((len(examples), width), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e.input_ids)
            input_ids[i, :n] = torch.tensor(e.input_ids)
            labels[i, :n] = torch.tensor(e.labels)
            attention[i, :n] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": labels,
            "real_tokens": attention.sum(),
            "loss_tokens": (labels[:, 1:] != -100).sum(),
            "num_examples": torch.tensor(len(examples)),
            "record_ids": [e.record_id for e in examples],
        }

    def collate_packed(self, tokenizer: Any, rows: Sequence[Sequence[ift.EncodedExample]]) -> dict[str, Any]:
        import torch

        width = max(sum(len(e.input_ids) for e in row) for row in rows)
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        owner = torch.full((len(rows), width), -1, dtype=torch.long)  # each token's example, in record_ids order
        real = example = 0
        for r, row in enumerate(rows):
            pos = 0
            for e in row:
                n = len(e.input_ids)
                input_ids[r, pos : pos + n] = torch.tensor(e.input_ids)
                labels[r, pos : pos + n] = torch.tensor(e.labels)
                labels[r, pos] = -100  # an example's first token is never predicted from the one before it
                positions[r, pos : pos + n] = torch.arange(n)
                owner[r, pos : pos + n] = example
                pos += n
                example += 1
            real += pos
            positions[r, pos:] = torch.arange(width - pos)  # padding tail: a separate sequence, no labels
        # No attention_mask: transformers then derives a block-diagonal causal mask from the position
        # resets (varlen kernels with flash attention), so attention never crosses examples.
        return {
            "input_ids": input_ids,
            "position_ids": positions,
            "labels": labels,
            "example_index": owner,
            "real_tokens": torch.tensor(real),
            "loss_tokens": (labels[:, 1:] != -100).sum(),
            "num_examples": torch.tensor(sum(len(row) for row in rows)),
            "record_ids": [e.record_id for row in rows for e in row],
        }

    def loss_sum(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        losses, counted = self.token_losses(model, batch)
        count = counted.sum()
        return losses.sum(), count

    def loss_by_example(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any] | None:
        """Per-example summed loss (carrying the graph: the trainer backpropagates through their sum) and
        loss-token counts. A padded batch holds one example per row; a packed one says in ``example_index`` which
        example each token belongs to, and a predicted token is charged to the example it is part of (an example's
        first token is never predicted, so nothing is charged across a boundary). The sums add up to
        :meth:`loss_sum` to float tolerance (another summation order)."""
        import torch

        owner = self.loss_owners(batch)
        if owner is None:
            return None  # rows packed without saying which example owns each token
        losses, counted = self.token_losses(model, batch)
        n = len(batch["record_ids"])
        sums = losses.new_zeros(n).index_add(0, owner, losses)
        counts = torch.zeros(n, dtype=torch.long, device=owner.device).index_add(0, owner, torch.ones_like(owner))
        return sums, counts

    def training_penalty(self, model: Any) -> Any | None:
        return peft_methods.training_penalty(model)

    def token_losses(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        """Cross-entropy at each trained position (1-d, float32, in row-major order) and the ``[batch, n - 1]``
        mask of those positions (position ``i`` predicts token ``i + 1``). The LM head runs on the trained
        positions only, in chunks (:mod:`ift.head_loss`; models whose logits are not ``lm_head(hidden)`` fall back
        to the full logits)."""
        from ift import head_loss

        labels = batch["labels"][:, 1:]
        counted = labels != -100
        states = head_loss.head_inputs(model, self.model_inputs(batch), counted, length=batch["input_ids"].size(1))
        return head_loss.cross_entropy(states, labels[counted]), counted

    @staticmethod
    def loss_owners(batch: dict[str, Any]) -> Any:
        """The example (index into ``record_ids``) of each trained position, in :meth:`token_losses`' order;
        None for packed rows that do not say (no ``example_index``)."""
        counted = batch["labels"][:, 1:] != -100
        if "example_index" in batch:
            return batch["example_index"][:, 1:][counted]
        if "position_ids" in batch:
            return None
        return counted.nonzero()[:, 0]

    @staticmethod
    def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
        """The forward pass's arguments from a batch (packed rows: positions, no attention mask)."""
        inputs = {"input_ids": batch["input_ids"], "use_cache": False}
        if "position_ids" in batch:
            inputs["position_ids"] = batch["position_ids"]
        else:
            inputs["attention_mask"] = batch["attention_mask"]
        return inputs

    # --- generating and saving -----------------------------------------------------------------

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
        device = next(model.parameters()).device
        limit = getattr(self, "max_prompt_tokens", None)

        def generate_batch(chunk: Sequence[str], stop_ids: list[int]) -> list[list[int]]:
            encoded = [
                self.encode(tokenizer, [ift.Segment(p, False)], source="", record_id="").input_ids for p in chunk
            ]
            if limit:  # a run opened for inference: prompts keep their last `limit` tokens, the trained length
                encoded = [ids[-limit:] for ids in encoded]
            # Left padding: every prompt ends at the last position, where generation continues it.
            ids, mask = hf_loading.pad_batch(encoded, tokenizer.pad_token_id, left=True)
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
            )
            return out[:, ids.shape[1] :].tolist()  # the continuation, after the prompts

        return hf_loading.generate_texts(
            model, tokenizer, prompts, batch_size=batch_size, stop=stop, generate_batch=generate_batch
        )

    def save(self, model: Any, tokenizer: Any, path: Path) -> None:
        hf_loading.save_model_folder(model, tokenizer, path, getattr(self, "_base_snapshot", None))

    def finish_saved_folder(
        self,
        path: Path,
        *,
        final_path: Path,
        tokenizer: Any,
        renderer: Any,
        records: Sequence[ift.InstructionRecord],
        max_length: int,
    ) -> dict[str, Any]:
        """The trained prompt format as the chat template (with the BOS this adapter adds), the end-of-turn ids
        in generation_config.json, ``model_max_length``, an absolute LoRA base path (docs/inference.md)."""
        from ift.builtin_plugins.run_folder import finish_model_folder

        return finish_model_folder(
            path,
            final_path=final_path,
            tokenizer=tokenizer,
            renderer=renderer,
            records=records,
            max_length=max_length,
            bos_prefix=_adds_bos(tokenizer),
        )

    def load_trained(self, path: Path) -> tuple[Any, Any]:
        """Model and tokenizer from a folder :meth:`save` wrote (a full model, or a peft adapter with its base), an
        ``ift export`` folder, or its int8 copy (CPU). A peft model comes back unmerged, so ``ift export
        --merge`` can check the merge."""
        from transformers import AutoModelForCausalLM

        model, tokenizer = hf_loading.load_saved_model(self.config, path, AutoModelForCausalLM)
        self._adds_bos = _adds_bos(tokenizer)  # generate() encodes prompts exactly as training did
        return model, tokenizer


def _adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(with_special) and with_special[0] == bos


@ift.hookimpl
def ift_register_model_adapters() -> list[type]:
    return [CausalLMAdapter]
