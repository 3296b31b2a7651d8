"""The contract of PEFT methods: applied to the tiny causal LM, the method trains only its own weights, a few
steps change them, and the saved adapter loads with plain ``peft`` giving the same logits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ift.config import ComponentConfig
from ift.peft import PeftMethod, PeftMethodConfig
from ift.testing.contracts.base import ComponentContract
from ift.testing.models import TinyModel, load_tiny_model, tiny_model_table


class PeftMethodContract(ComponentContract):
    """Set ``component`` (an :class:`ift.PeftMethod`) and ``config`` (its ``[model.peft]`` keys, ``method``
    left out). The checks build the tiny Llama (``ift.testing.tiny_model_table``) with ``[model.peft]`` set to
    the method, through the ``ift_host`` fixture, so the method must be registered there."""

    kind = "peft_method"

    def make_config(self, base_dir: Path | None) -> ComponentConfig:
        """The method's config from :attr:`config`, validated as the ``[model.peft]`` table would be."""
        from pydantic import ValidationError

        cls = self.component_class()
        try:
            return cls.Config.model_validate({**self.config, "method": cls.name})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(config)'}: {e['msg']}" for e in exc.errors())
            pytest.fail(f"{type(self).__name__}.config is not valid for {cls.__name__}.Config: {problems}")

    def load(self, host: Any, folder: Path) -> TinyModel:
        cls = self.component_class()
        table = tiny_model_table(peft={**self.config, "method": cls.name})
        return load_tiny_model(host, table, base_dir=folder)

    def test_config_is_a_peft_method_config(self) -> None:
        cls = self.component_class()
        assert issubclass(cls.Config, PeftMethodConfig), f"{cls.__name__}.Config must subclass ift.PeftMethodConfig"
        assert isinstance(cls.packing, bool)

    def test_describe_is_one_line(self) -> None:
        cls = self.component_class()
        method = cls(self.make_config(None))
        assert isinstance(method, PeftMethod)
        text = method.describe()
        assert isinstance(text, str) and text.strip() and "\n" not in text, f"describe() gave {text!r}"

    def test_trains_only_its_own_weights_and_reloads_with_plain_peft(self, ift_host: Any, tmp_path: Path) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        tiny = self.load(ift_host, tmp_path)
        model = tiny.model
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable, "the method left nothing trainable"
        assert len(trainable) < len(list(model.named_parameters())), "the method trains every weight"
        before = tiny.snapshot()
        ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        model.train()
        for _ in range(3):
            logits = model(input_ids=ids).logits[:, -ids.size(1) :]
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1)
            )
            assert torch.isfinite(loss)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        after = tiny.snapshot()
        assert any(not torch.equal(before[n], after[n]) for n in before), "three steps changed no weight"

        model.eval()
        folder = tmp_path / "model"
        tiny.adapter.save(model, tiny.tokenizer, folder)  # as a run saves model/: the adapter, its base beside it
        reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder / "base_model"), folder)
        with torch.no_grad():
            ours = model(input_ids=ids).logits[:, -ids.size(1) :]
            theirs = reloaded.eval()(input_ids=ids).logits[:, -ids.size(1) :]
        assert torch.allclose(ours, theirs, atol=1e-5, rtol=0), "plain peft's reload gives other logits"
