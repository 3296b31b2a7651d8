"""Encoded examples in flat, memory-mapped arrays: the same examples as the lists they replace, the same
batches, and a cache entry that is mapped rather than read into memory."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

import ift
from ift.cache import Prepared, PreparedCache
from ift.examples import ExampleTable, PackedRows, TableWriter, lengths, sources, tasks, write_table


def examples(n: int = 40, seed: int = 0) -> list[ift.EncodedExample]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ids = [rng.randrange(0, 50_000) for _ in range(rng.randint(1, 30))]
        cut = rng.randrange(len(ids))
        labels = [-100] * cut + ids[cut:]
        if i % 7 == 3:  # encoder-decoder style: labels of their own length
            labels = [rng.randrange(0, 300) for _ in range(rng.randint(0, 9))]
        out.append(
            ift.EncodedExample(
                ids, labels, f"src{i % 3}", f"id-{i}", truncated=i % 5 == 0, task=None if i % 4 == 0 else f"task{i % 2}"
            )
        )
    return out


def test_table_holds_exactly_the_examples_of_the_lists(tmp_path: Path):
    given = examples()
    table = write_table(given, tmp_path / "t")
    assert len(table) == len(given)
    assert list(table) == given  # ids, labels, source, record id, truncated, task: all equal
    assert table[-1] == given[-1] and table[3:6] == given[3:6]
    assert lengths(table) == [len(e.input_ids) for e in given] == lengths(given)
    assert sources(table) == [e.source for e in given] and tasks(table) == [e.task for e in given]
    assert table.trainable.tolist() == [e.trainable_tokens for e in given]
    assert [type(t) for t in table[0].input_ids] == [int] * len(given[0].input_ids)  # plain ints, as before
    with pytest.raises(IndexError):
        table[len(given)]


def test_writer_flushes_token_buffers_and_keeps_memory_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import ift.examples as module

    monkeypatch.setattr(module, "FLUSH_TOKENS", 16)  # flush every few examples
    given = examples(200, seed=1)
    writer = TableWriter(tmp_path / "t")
    for example in given:
        writer.add(example)
        assert len(writer._buffers["ids"]) < 16 + 30
    table = writer.close()
    assert list(table) == given
    ids = (tmp_path / "t" / "ids.bin").read_bytes()
    assert np.frombuffer(ids, dtype="<i4").tolist() == [t for e in given for t in e.input_ids]


def test_empty_table(tmp_path: Path):
    table = write_table([], tmp_path / "t")
    assert len(table) == 0 and list(table) == [] and lengths(table) == []
    assert (
        list(
            PreparedCache(tmp_path / "c")
            .load(PreparedCache(tmp_path / "c").store("k", Prepared(examples(3), [], [], {})).name)
            .eval
        )
        == []
    )


def test_cache_entry_is_memory_mapped_and_equal_to_the_lists(tmp_path: Path):
    given = examples()
    cache = PreparedCache(tmp_path)
    cache.store("k", Prepared(given, given[:4], [], {"n": 1}))
    loaded = cache.load("k")
    assert isinstance(loaded.train, ExampleTable)
    assert isinstance(loaded.train.columns["ids"], np.memmap) and loaded.train.columns["ids"].mode == "r"
    assert list(loaded.train) == given and list(loaded.eval) == given[:4]
    # two loads map the same file (under torchrun every rank does this instead of holding a copy)
    again = cache.load("k")
    assert again.train.columns["ids"].filename == loaded.train.columns["ids"].filename


def test_tables_survive_their_folder_being_removed(tmp_path: Path):
    """A run without the cache maps a temporary folder and removes it at once (POSIX keeps the mapping)."""
    import shutil

    given = examples()
    table = write_table(given, tmp_path / "t")
    shutil.rmtree(tmp_path / "t")
    assert list(table) == given


@pytest.mark.parametrize("mode", ["padding", "length-grouped", "padding-free", "packing"])
def test_batches_from_a_table_equal_batches_from_lists(mode: str, tmp_path: Path):
    import torch

    from ift.builtin_plugins.causal_lm import CausalLMAdapter
    from ift.builtin_plugins.sft import SFTConfig, SFTTrainer

    adapter = CausalLMAdapter(
        CausalLMAdapter.Config(tokenizer="byte-level", from_config={"model_type": "llama"}), base_dir=Path(".")
    )
    tokenizer = adapter.load_tokenizer()
    given = [e for e in examples(60, seed=2) if len(e.labels) == len(e.input_ids)]
    given = [
        ift.EncodedExample(
            [t % 256 for t in e.input_ids],
            [t % 256 if t >= 0 else t for t in e.labels],
            e.source,
            e.record_id,
            e.truncated,
            e.task,
        )
        for e in given
    ]
    table = write_table(given, tmp_path / "t")
    trainer = SFTTrainer(SFTConfig(batch_size=4, max_length=40))

    def batches(train: object) -> list[dict]:
        ctx = ift.TrainContext(
            model=None,
            tokenizer=tokenizer,
            adapter=adapter,
            train_examples=train,  # type: ignore[arg-type]
            eval_examples=[],
            seed=3,
            run_dir=tmp_path,
            log_step=lambda e: None,
            evaluate=lambda m, s: {},
            progress=None,
        )  # type: ignore[arg-type]
        loader = trainer.build_loader(ctx, mode)
        loader.batch_sampler.select(1)
        return list(loader)

    left, right = batches(given), batches(table)
    assert len(left) == len(right) > 1
    for a, b in zip(left, right, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert torch.equal(a[key], b[key]), key
            else:
                assert a[key] == b[key], key
    if mode == "packing":
        rows = trainer.build_loader(
            ift.TrainContext(
                model=None,
                tokenizer=tokenizer,
                adapter=adapter,
                train_examples=table,
                eval_examples=[],
                seed=3,
                run_dir=tmp_path,
                log_step=lambda e: None,
                evaluate=lambda m, s: {},
                progress=None,
            ),  # type: ignore[arg-type]
            mode,
        ).dataset
        assert isinstance(rows, PackedRows)  # rows are index lists until a batch reads them
