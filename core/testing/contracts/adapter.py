"""The contract of model adapters."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ift.components import EncodedExample, ModelAdapter, Renderer
from ift.records import InstructionRecord
from ift.testing.contracts.base import ComponentContract, finite
from ift.testing.samples import sample_records

BATCH_KEYS = ("labels", "loss_tokens", "real_tokens", "num_examples", "record_ids")


def bound_renderer(renderer_cls: type[Renderer] | None, folder: Path, tokenizer: Any) -> Renderer:
    """The contract's renderer (``alpaca`` unless it names one) with its default config, bound to ``tokenizer``:
    how the adapter and trainer contracts render their sample records."""
    if renderer_cls is None:
        from ift.builtin_plugins.renderers import AlpacaRenderer

        renderer_cls = AlpacaRenderer
    renderer = renderer_cls(renderer_cls.Config(), base_dir=folder)
    renderer.bind(tokenizer)
    return renderer


@dataclass
class LoadedAdapter:
    """What the adapter contract loads once per test class."""

    adapter: ModelAdapter
    tokenizer: Any
    model: Any
    renderer: Renderer
    records: list[InstructionRecord]
    examples: list[EncodedExample]
    folder: Path


def to_device(batch: dict[str, Any], model: Any) -> dict[str, Any]:
    device = next(model.parameters()).device
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


class ModelAdapterContract(ComponentContract):
    """A model adapter loads a tokenizer and a model from a tiny config; encodes rendered records into ids
    and labels of equal length (-100 where no loss is taken, the prompt untrained, the answer trained);
    collates batches with the batch contract's keys (``loss_tokens`` equal to the count ``loss_sum`` returns);
    returns a finite, differentiable summed loss; generates one text per prompt; and saves a folder that
    :meth:`~ift.ModelAdapter.load_trained` loads back into a model giving the same outputs.

    Set ``component`` and ``config`` (a tiny model: built from a config, no download). ``labels_are_input_ids``
    (true for decoder-only models) also checks that every trained label is the token at its position and that
    the ids are exactly those of tokenizing the whole text."""

    kind = "model_adapter"
    records: ClassVar[list[InstructionRecord] | None] = None
    renderer: ClassVar[type[Renderer] | None] = None
    labels_are_input_ids: ClassVar[bool] = True
    #: Largest difference tolerated between the saved-and-loaded model's loss and the original's.
    tolerance: ClassVar[float] = 1e-4

    def make_adapter(self, base_dir: Path) -> ModelAdapter:
        cls = self.component_class()
        return cls(self.make_config(base_dir), base_dir=base_dir)  # type: ignore[call-arg]

    @pytest.fixture(scope="class")
    @classmethod
    def loaded(cls, tmp_path_factory: pytest.TempPathFactory) -> LoadedAdapter:
        """Loaded once per test class: the model is only read by the checks, never trained."""
        from ift.runtime import seed_everything
        from ift.testing.samples import write_files

        self = cls()
        folder = tmp_path_factory.mktemp("adapter-contract")
        write_files(folder, self.files)
        adapter = self.make_adapter(folder)
        tokenizer = adapter.load_tokenizer()
        seed_everything(0)
        model = adapter.load_model(tokenizer)
        renderer = bound_renderer(self.renderer, folder, tokenizer)
        records = list(self.records if self.records is not None else sample_records())
        examples = [adapter.encode_record(tokenizer, r, renderer.render(r)) for r in records]
        return LoadedAdapter(adapter, tokenizer, model, renderer, records, examples, folder)

    def test_loads_tokenizer_and_model(self, loaded: LoadedAdapter) -> None:
        parameters = list(loaded.model.parameters())
        assert parameters, "load_model() returned a model without parameters"
        assert any(p.requires_grad for p in parameters), "load_model() returned a model with nothing to train"

    def test_encode_aligns_labels_with_ids(self, loaded: LoadedAdapter) -> None:
        for record, example in zip(loaded.records, loaded.examples, strict=True):
            where = f"record {record.id!r}"
            assert isinstance(example, EncodedExample), f"{where}: encode_record() must return an ift.EncodedExample"
            assert example.record_id == record.id and example.source == record.source, (
                f"{where}: the example must carry the record's id and source"
            )
            assert example.input_ids and example.labels, f"{where}: an example needs ids and labels"
            assert all(isinstance(t, int) for t in example.input_ids + example.labels), f"{where}: ids must be ints"
            assert example.trainable_tokens > 0, f"{where}: no label is trained; the answer must be"
            if self.labels_are_input_ids:
                assert len(example.input_ids) == len(example.labels), (
                    f"{where}: {len(example.input_ids)} ids but {len(example.labels)} labels"
                )
                assert example.labels[0] == -100, f"{where}: the prompt's first token must not be trained (-100)"
                assert example.trainable_tokens < len(example.labels), (
                    f"{where}: every token is trained; the prompt must not be"
                )
                wrong = [
                    i
                    for i, (t, y) in enumerate(zip(example.input_ids, example.labels, strict=True))
                    if y not in (-100, t)
                ]
                assert not wrong, f"{where}: labels at positions {wrong[:10]} are neither -100 nor the token there"
                text = "".join(s.text for s in loaded.renderer.render(record))
                ids = list(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])
                body = example.input_ids[len(example.input_ids) - len(ids) :]
                assert body == ids, f"{where}: the ids trained on differ from tokenizing the whole text"

    def test_collate_gives_the_batch_contract(self, loaded: LoadedAdapter) -> None:
        import torch

        batch = loaded.adapter.collate(loaded.tokenizer, loaded.examples)
        missing = [k for k in BATCH_KEYS if k not in batch]
        assert not missing, f"collate() is missing batch keys {missing}"
        assert isinstance(batch["loss_tokens"], torch.Tensor) and batch["loss_tokens"].ndim == 0, (
            "loss_tokens must be a 0-d tensor"
        )
        assert int(batch["num_examples"]) == len(loaded.examples)
        assert list(batch["record_ids"]) == [e.record_id for e in loaded.examples], (
            "record_ids must list the examples' ids in order"
        )
        assert 0 < int(batch["real_tokens"]), "real_tokens must count the non-padding tokens"
        if self.labels_are_input_ids:
            assert int(batch["real_tokens"]) == sum(len(e.input_ids) for e in loaded.examples)

    def test_loss_sum_counts_the_loss_tokens(self, loaded: LoadedAdapter) -> None:
        batch = to_device(loaded.adapter.collate(loaded.tokenizer, loaded.examples), loaded.model)
        loaded.model.train()
        loss, count = loaded.adapter.loss_sum(loaded.model, batch)
        assert finite(loss) and float(loss.detach()) > 0, f"loss_sum() gave {loss}; expected a finite positive sum"
        assert int(count) == int(batch["loss_tokens"]) > 0, (
            f"loss_sum() counted {int(count)} tokens but the batch's loss_tokens is {int(batch['loss_tokens'])}"
        )
        assert getattr(loss, "requires_grad", False), "the loss must be differentiable (trainers call backward)"
        loss.backward()
        loaded.model.zero_grad(set_to_none=True)

    def test_loss_by_example_sums_to_loss_sum(self, loaded: LoadedAdapter) -> None:
        import torch

        batch = to_device(loaded.adapter.collate(loaded.tokenizer, loaded.examples), loaded.model)
        loaded.model.eval()  # no dropout: both passes must see the same network
        with torch.no_grad():
            per_example = loaded.adapter.loss_by_example(loaded.model, batch)
            if per_example is None:
                return  # optional: per-source training loss is then not reported
            loss, count = loaded.adapter.loss_sum(loaded.model, batch)
        sums, counts = per_example
        assert len(sums) == len(counts) == len(loaded.examples)
        assert math.isclose(float(sums.sum()), float(loss), rel_tol=1e-4), (
            f"loss_by_example() sums to {float(sums.sum())}, loss_sum() gives {float(loss)}"
        )
        assert int(counts.sum()) == int(count)

    def test_packed_batches_match_padded_ones(self, loaded: LoadedAdapter) -> None:
        import torch

        if not loaded.adapter.supports_packing:
            return
        adapter, model, tokenizer = loaded.adapter, loaded.model, loaded.tokenizer
        padded = to_device(adapter.collate(tokenizer, loaded.examples), model)
        packed = to_device(adapter.collate_packed(tokenizer, [loaded.examples]), model)
        assert list(packed["record_ids"]) == [e.record_id for e in loaded.examples]
        model.eval()
        with torch.no_grad():
            a, n_a = adapter.loss_sum(model, padded)
            b, n_b = adapter.loss_sum(model, packed)
        assert int(n_a) == int(n_b) == int(packed["loss_tokens"])
        assert math.isclose(float(a), float(b), rel_tol=1e-4), f"packed loss {float(b)} != padded loss {float(a)}"

    def test_fit_applies_the_length_policy(self, loaded: LoadedAdapter) -> None:
        example = max(loaded.examples, key=lambda e: len(e.input_ids))
        n = len(example.input_ids)
        kept, reason = loaded.adapter.fit(example, max_length=n, overlong="drop")
        assert kept is not None and reason is None and kept.input_ids == example.input_ids
        dropped, reason = loaded.adapter.fit(example, max_length=n - 1, overlong="drop")
        assert dropped is None and reason, "an overlong example with overlong='drop' must be dropped with a reason"

    def test_generate_returns_one_text_per_prompt(self, loaded: LoadedAdapter) -> None:
        prompts = [loaded.renderer.prompt(r) for r in loaded.records[:3]]
        texts = loaded.adapter.generate(loaded.model, loaded.tokenizer, prompts, max_new_tokens=4, batch_size=2)
        assert isinstance(texts, list) and len(texts) == len(prompts) and all(isinstance(t, str) for t in texts)

    def test_save_then_load_trained_gives_the_same_outputs(self, loaded: LoadedAdapter) -> None:
        import torch

        adapter, model, tokenizer = loaded.adapter, loaded.model, loaded.tokenizer
        target = loaded.folder / "saved-model"
        adapter.save(model, tokenizer, target)
        assert target.is_dir() and any(target.iterdir()), "save() wrote nothing"
        fresh = self.make_adapter(loaded.folder)  # as `ift generate` would: a new adapter from the recipe
        try:
            model2, tokenizer2 = fresh.load_trained(target)
        except NotImplementedError as exc:
            pytest.fail(
                f"{type(fresh).__name__}.load_trained() is not implemented ({exc}); without it a saved "
                "run cannot be used by ift generate / chat / export / serve"
            )
        record = loaded.records[0]
        text = "".join(s.text for s in loaded.renderer.render(record))
        assert (
            tokenizer2(text, add_special_tokens=False)["input_ids"]
            == tokenizer(text, add_special_tokens=False)["input_ids"]
        ), "the loaded tokenizer encodes differently"
        batch = adapter.collate(tokenizer, loaded.examples)
        model.eval()
        model2.eval()
        with torch.no_grad():
            before, _ = adapter.loss_sum(model, to_device(batch, model))
            after, _ = fresh.loss_sum(model2, to_device(batch, model2))
        assert math.isclose(float(before), float(after), rel_tol=self.tolerance), (
            f"the loaded model's loss {float(after)} differs from the saved one's {float(before)}"
        )
        prompts = [loaded.renderer.prompt(r) for r in loaded.records[:2]]
        assert fresh.generate(model2, tokenizer2, prompts, max_new_tokens=4, batch_size=2) == adapter.generate(
            model, tokenizer, prompts, max_new_tokens=4, batch_size=2
        )
