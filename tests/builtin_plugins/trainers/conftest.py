"""Fixtures of the trainer tests: a tiny model and a train context builder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ift

from .helpers import Recorder, build


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Any, Any, Any]:
    """Adapter, tokenizer and a full fine-tuning tiny Llama (seeded, eval mode: no randomness)."""
    adapter, tokenizer, model = build(tmp_path)
    return adapter, tokenizer, model.eval()


@pytest.fixture
def make_context(tmp_path: Path) -> Callable[..., ift.TrainContext]:
    def make(
        adapter: Any, tokenizer: Any, model: Any, examples: list[ift.EncodedExample], **fields: Any
    ) -> ift.TrainContext:
        return ift.TrainContext(
            model=model,
            tokenizer=tokenizer,
            adapter=adapter,
            train_examples=examples,
            eval_examples=[],
            seed=0,
            run_dir=tmp_path,
            log_step=lambda event: None,
            evaluate=lambda m, stage: {},
            progress=Recorder(),
            **fields,
        )

    return make
