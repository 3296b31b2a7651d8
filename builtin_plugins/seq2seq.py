"""The ``seq2seq`` model adapter: encoder-decoder models (T5, FLAN-T5, BART... any ``AutoModelForSeq2SeqLM``)
by hub id or local folder, or built from a config (tests), fully fine-tuned or with ``[model.peft]``.

The rendered prompt (everything before the last trainable segment, exactly what
:meth:`ift.Renderer.prompt` gives at generation time) is the encoder's input, tokenized as the tokenizer
tokenizes a model input (T5 appends ``</s>``). The last trainable segment is the answer: the decoder's
labels are its ids followed by EOS (not repeated when the template already ends the answer with it), and the
loss is taken on them only. Earlier trainable segments of a multi-turn record stay in the encoder's input as
context and are not trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

import ift
from ift.builtin_plugins import hf_loading, peft_methods


class Seq2SeqConfig(hf_loading.PretrainedModelConfig):
    """Which encoder-decoder model to load and how, and which end of an overlong prompt is cut."""

    prompt_truncation: Literal["end", "start"] = Field(
        "end",
        description="A prompt longer than trainer.max_length loses its end (keeps the instruction, as "
        "transformers tokenizers truncate) or its start (keeps the text nearest the answer). "
        "Special tokens the tokenizer adds (T5's </s>) are kept either way.",
    )


class Seq2SeqAdapter(ift.ModelAdapter):
    """Encoder-decoder language models: prompt to the encoder, answer (+ EOS) to the decoder."""

    name = "seq2seq"
    Config = Seq2SeqConfig
    config: Seq2SeqConfig

    def __init__(self, config: ift.ComponentConfig, *, base_dir: Path) -> None:
        super().__init__(config, base_dir=base_dir)
        self._base_snapshot: Path | None = None
        self._affixes: tuple[list[int], list[int]] = ([], [])
        self._affixes_of: int | None = None

    # --- loading -------------------------------------------------------------------------------

    def load_tokenizer(self) -> Any:
        tokenizer = hf_loading.load_tokenizer(self.config, self.base_dir)
        self._learn_affixes(tokenizer)
        return tokenizer

    def load_model(self, tokenizer: Any) -> Any:
        from transformers import AutoModelForSeq2SeqLM

        # T5's convention, for a model built from a config: the decoder starts from the pad token.
        loaded = hf_loading.load_model(
            self.config,
            self.base_dir,
            AutoModelForSeq2SeqLM,
            tokenizer,
            task_type="SEQ_2_SEQ_LM",
            config_defaults={"decoder_start_token_id": tokenizer.pad_token_id},
        )
        self._base_snapshot = loaded.base_snapshot
        if loaded.model.config.decoder_start_token_id is None:
            raise ift.RunError(
                "the model's config has no decoder_start_token_id, so its decoder inputs cannot be "
                "built; set it in model.from_config or use a model that defines it"
            )
        return loaded.model

    def load_trained(self, path: Path) -> tuple[Any, Any]:
        """A folder :meth:`save` wrote (full model or peft adapter, base beside it), or an int8 export."""
        from transformers import AutoModelForSeq2SeqLM

        model, tokenizer = hf_loading.load_saved_model(self.config, path, AutoModelForSeq2SeqLM)
        self._learn_affixes(tokenizer)
        return model, tokenizer

    def describe(self) -> dict[str, Any]:
        return hf_loading.describe_origin(self.config, "encoder-decoder")

    supports_gradient_checkpointing = True

    def enable_gradient_checkpointing(self, model: Any) -> None:
        hf_loading.enable_gradient_checkpointing(model)

    def on_optimizer_step(self, model: Any, step: int, total_steps: int) -> None:
        peft_methods.on_optimizer_step(model, self.config.peft, step, total_steps)

    # --- tokenizing ----------------------------------------------------------------------------

    def _learn_affixes(self, tokenizer: Any) -> None:
        """The special ids the tokenizer puts before and after a model input (T5: none before, ``</s>``
        after; BART: ``<s>`` and ``</s>``), so truncation can keep them."""
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a", add_special_tokens=True)["input_ids"]
        at = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), None)
        self._affixes = ([], []) if at is None else (full[:at], full[at + len(plain) :])
        self._affixes_of = id(tokenizer)

    def encode_prompt(self, tokenizer: Any, text: str) -> list[int]:
        """Encoder ids of a prompt, the same at training and generation time. Never empty: a record without
        a prompt gets EOS alone (an encoder needs at least one position)."""
        if self._affixes_of != id(tokenizer):
            self._learn_affixes(tokenizer)
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        return ids or [tokenizer.eos_token_id]

    def encode(
        self, tokenizer: Any, segments: Sequence[ift.Segment], *, source: str, record_id: str
    ) -> ift.EncodedExample:
        last = max((i for i, s in enumerate(segments) if s.trainable), default=None)
        if last is None:  # nothing to learn (a generation prompt, or a record the core will drop)
            return ift.EncodedExample(
                self.encode_prompt(tokenizer, "".join(s.text for s in segments)), [], source, record_id
            )
        prompt = "".join(s.text for s in segments[:last])
        labels = list(tokenizer(segments[last].text, add_special_tokens=False)["input_ids"])
        if not labels or labels[-1] != tokenizer.eos_token_id:
            labels.append(tokenizer.eos_token_id)
        return ift.EncodedExample(self.encode_prompt(tokenizer, prompt), labels, source, record_id)

    def fit(
        self, example: ift.EncodedExample, *, max_length: int, overlong: Literal["truncate", "drop"]
    ) -> tuple[ift.EncodedExample | None, str | None]:
        """``max_length`` bounds each side on its own (encoder input, decoder labels): they are separate
        sequences. ``truncate`` cuts the prompt at the end ``model.prompt_truncation`` names, keeping the
        tokenizer's special tokens, and cuts the answer's end (its EOS with it: a cut answer must not teach
        the model to stop there)."""
        ids, labels = example.input_ids, example.labels
        long_prompt, long_answer = len(ids) > max_length, len(labels) > max_length
        if not (long_prompt or long_answer):
            return example, None
        if overlong == "drop":
            return None, "longer than max_length"
        if long_prompt:
            prefix, suffix = self._affixes
            if ids[: len(prefix)] != prefix or ids[len(ids) - len(suffix) :] != suffix:
                prefix, suffix = [], []
            room = max(max_length - len(prefix) - len(suffix), 0)
            body = ids[len(prefix) : len(ids) - len(suffix)]
            body = body[:room] if self.config.prompt_truncation == "end" else body[len(body) - room :]
            ids = (prefix + body + suffix)[:max_length]
        labels = labels[:max_length]
        reason = {
            (True, False): "prompt truncated to max_length",
            (False, True): "answer truncated to max_length",
            (True, True): "prompt and answer truncated to max_length",
        }[(long_prompt, long_answer)]
        return ift.EncodedExample(ids, labels, example.source, example.record_id, truncated=True), reason

    # --- batches and loss ----------------------------------------------------------------------

    def collate(self, tokenizer: Any, examples: Sequence[ift.EncodedExample]) -> dict[str, Any]:
        """Encoder ids right-padded with an attention mask; decoder labels padded with -100 to the longest
        answer (labels are shorter than the inputs as a rule). ``real_tokens`` counts encoder tokens, so the
        trainer's padding fraction (real tokens over the size of ``input_ids``) stays meaningful."""
        import torch

        width = max(len(e.input_ids) for e in examples)
        answer_width = max(max(len(e.labels) for e in examples), 1)
        input_ids = torch.full((len(examples), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(examples), width), dtype=torch.long)
        labels = torch.full((len(examples), answer_width), -100, dtype=torch.long)
        for i, e in enumerate(examples):
            input_ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
            attention[i, : len(e.input_ids)] = 1
            if e.labels:
                labels[i, : len(e.labels)] = torch.tensor(e.labels)
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": labels,
            "real_tokens": attention.sum(),
            "loss_tokens": (labels != -100).sum(),
            "num_examples": torch.tensor(len(examples)),
            "record_ids": [e.record_id for e in examples],
        }

    def token_losses(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        """Cross-entropy at each labelled decoder position (1-d, float32, row-major order) and the label mask,
        one forward pass. Decoder inputs are the labels shifted right behind ``decoder_start_token_id`` (teacher
        forcing). The LM head runs on the labelled positions only, in chunks (:mod:`ift.head_loss`; a model whose
        logits are not ``lm_head(hidden)``, such as BART with a non-zero ``final_logits_bias``, falls back to the
        full logits)."""
        from ift import head_loss

        labels = batch["labels"]
        config = model.config
        decoder_ids = labels.new_full(labels.shape, config.pad_token_id)
        decoder_ids[:, 0] = config.decoder_start_token_id
        decoder_ids[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == -100, config.pad_token_id)
        mask = labels != -100
        inputs = {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "decoder_input_ids": decoder_ids,
            "use_cache": False,
        }
        states = head_loss.head_inputs(model, inputs, mask, length=labels.size(1))
        return head_loss.cross_entropy(states, labels[mask]), mask

    def loss_sum(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        losses, mask = self.token_losses(model, batch)
        count = mask.sum()
        return losses.sum(), count

    def loss_by_example(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        """Each example's summed loss (carrying the graph: the trainer may backpropagate through their sum) and
        loss-token count."""
        losses, mask = self.token_losses(model, batch)
        owner = mask.nonzero()[:, 0]
        sums = losses.new_zeros(mask.size(0)).index_add(0, owner, losses)
        return sums, mask.sum(dim=1)

    def training_penalty(self, model: Any) -> Any | None:
        return peft_methods.training_penalty(model)

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

        def generate_batch(chunk: Sequence[str], stop_ids: list[int]) -> list[list[int]]:
            # The prompts go to the encoder (right-padded, as in training); the decoder starts from its own token.
            ids, mask = hf_loading.pad_batch([self.encode_prompt(tokenizer, p) for p in chunk], tokenizer.pad_token_id)
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
                decoder_start_token_id=model.config.decoder_start_token_id,
            )
            return out[:, 1:].tolist()  # the decoder's first position is its start token

        return hf_loading.generate_texts(
            model, tokenizer, prompts, batch_size=batch_size, stop=stop, generate_batch=generate_batch
        )

    def save(self, model: Any, tokenizer: Any, path: Path) -> None:
        """``AutoModelForSeq2SeqLM.from_pretrained(path)``, or with PEFT
        ``PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(<base>), path)`` where the base is
        ``path/base_model`` for a model built from a config and the pretrained model's id otherwise."""
        hf_loading.save_model_folder(model, tokenizer, path, self._base_snapshot)

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
        """As for causal-lm: the chat template renders the encoder's input exactly as trained; the end-of-turn
        ids in generation_config.json; ``model_max_length``; an absolute LoRA base path."""
        from ift.builtin_plugins.run_folder import finish_model_folder

        return finish_model_folder(
            path, final_path=final_path, tokenizer=tokenizer, renderer=renderer, records=records, max_length=max_length
        )


@ift.hookimpl
def ift_register_model_adapters() -> list[type]:
    return [Seq2SeqAdapter]
