"""The seq2seq adapter: the prompt goes to the encoder and the answer + EOS to the decoder (exact ids), the
length policy per side, batches with shorter labels, the loss against transformers' own, generation, and
saved folders that plain transformers / peft load with identical logits; plus one tiny ``ift run``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import ift
from ift.builtin_plugins import peft_methods
from ift.builtin_plugins.renderers import AlpacaRenderer
from ift.builtin_plugins.seq2seq import Seq2SeqAdapter, Seq2SeqConfig
from ift.builtin_plugins.sft import SFTConfig, SFTTrainer, resolve_batching
from ift.records import InstructionRecord, Message

Seg = ift.Segment
EOS, PAD = 257, 256
TINY_T5 = {
    "model_type": "t5",
    "d_model": 16,
    "d_ff": 32,
    "d_kv": 8,
    "num_heads": 2,
    "num_layers": 1,
    "num_decoder_layers": 1,
}
ByteIds = Callable[[str], list[int]]


def make_adapter(tmp_path: Path, **options: Any) -> Seq2SeqAdapter:
    config = Seq2SeqConfig(tokenizer="byte-level", from_config=TINY_T5, device="cpu", dtype="float32", **options)
    return Seq2SeqAdapter(config, base_dir=tmp_path)


@pytest.fixture
def adapter(tmp_path: Path) -> Seq2SeqAdapter:
    return make_adapter(tmp_path)


@pytest.fixture
def tok(adapter: Seq2SeqAdapter) -> Any:
    return adapter.load_tokenizer()


# --- encoding ------------------------------------------------------------------------------------


def test_prompt_to_encoder_answer_and_eos_to_decoder(adapter: Seq2SeqAdapter, tok: Any, byte_ids: ByteIds) -> None:
    segments = [Seg("Q: hi\n", False), Seg("Hello!<|endoftext|>", True), Seg("\n\n", False)]
    example = adapter.encode(tok, segments, source="s", record_id="r1")
    assert example.input_ids == byte_ids("Q: hi\n")
    assert example.labels == byte_ids("Hello!") + [EOS]  # the template's EOS, not a second one
    assert (example.source, example.record_id, example.trainable_tokens) == ("s", "r1", 7)
    # an answer the template does not end with EOS gets it appended
    plain = adapter.encode(tok, [Seg("Q\n", False), Seg("A", True)], source="s", record_id="r2")
    assert plain.input_ids == byte_ids("Q\n") and plain.labels == byte_ids("A") + [EOS]


def test_multi_turn_trains_the_last_answer_with_earlier_turns_as_context(
    adapter: Seq2SeqAdapter, tok: Any, byte_ids: ByteIds
) -> None:
    segments = [Seg("u1\n", False), Seg("a1<|endoftext|>", True), Seg("u2\n", False), Seg("a2<|endoftext|>", True)]
    example = adapter.encode(tok, segments, source="s", record_id="r")
    assert example.input_ids == byte_ids("u1\na1<|endoftext|>u2\n")
    assert example.labels == byte_ids("a2") + [EOS]


def test_encoder_input_is_exactly_the_renderers_generation_prompt(
    adapter: Seq2SeqAdapter, tok: Any, byte_ids: ByteIds, tmp_path: Path
) -> None:
    renderer = AlpacaRenderer(AlpacaRenderer.Config(), base_dir=tmp_path)
    renderer.bind(tok)
    record = InstructionRecord(
        id="x", source="s", messages=[Message("user", "Reverse: abc"), Message("assistant", "cba")]
    )
    example = adapter.encode_record(tok, record, renderer.render(record))
    assert (
        example.input_ids
        == byte_ids(renderer.prompt(record))
        == byte_ids("### Instruction:\nReverse: abc\n\n### Response:\n")
    )
    assert example.labels == byte_ids("cba") + [EOS]
    assert adapter.encode_prompt(tok, renderer.prompt(record)) == example.input_ids  # what generation feeds


def test_no_trainable_segment_gives_no_labels(adapter: Seq2SeqAdapter, tok: Any, byte_ids: ByteIds) -> None:
    example = adapter.encode(tok, [Seg("just a prompt", False)], source="s", record_id="r")
    assert example.input_ids == byte_ids("just a prompt") and example.labels == []
    empty = adapter.encode(tok, [Seg("answer", True)], source="s", record_id="r")
    assert empty.input_ids == [EOS]  # an encoder needs one position


def t5_like_tokenizer() -> Any:
    """The byte tokenizer with T5's post-processing: EOS appended to every model input."""
    from tokenizers import processors

    from ift.builtin_plugins.byte_tokenizer import build_byte_tokenizer

    tokenizer = build_byte_tokenizer()
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", EOS)]
    )
    return tokenizer


def test_tokenizer_special_tokens_are_kept_on_the_encoder_side(adapter: Seq2SeqAdapter, byte_ids: ByteIds) -> None:
    tokenizer = t5_like_tokenizer()
    example = adapter.encode(tokenizer, [Seg("abcdef\n", False), Seg("xy", True)], source="s", record_id="r")
    assert example.input_ids == byte_ids("abcdef\n") + [EOS] and example.labels == byte_ids("xy") + [EOS]
    cut, reason = adapter.fit(example, max_length=4, overlong="truncate")
    assert cut is not None and cut.input_ids == byte_ids("abc") + [EOS] and reason == "prompt truncated to max_length"


# --- length policy -------------------------------------------------------------------------------


@pytest.mark.parametrize(("side", "kept"), [("end", "abcd"), ("start", "ghij")])
def test_overlong_prompt_is_cut_on_the_configured_side(tmp_path: Path, byte_ids: ByteIds, side: str, kept: str) -> None:
    adapter = make_adapter(tmp_path, prompt_truncation=side)
    tokenizer = adapter.load_tokenizer()
    example = adapter.encode(tokenizer, [Seg("abcdefghij", False), Seg("ok", True)], source="s", record_id="r")
    cut, reason = adapter.fit(example, max_length=4, overlong="truncate")
    assert cut is not None and cut.truncated
    assert cut.input_ids == byte_ids(kept) and cut.labels == byte_ids("ok") + [EOS]  # answer untouched
    assert reason == "prompt truncated to max_length"


def test_overlong_answer_loses_its_end_and_eos(adapter: Seq2SeqAdapter, tok: Any, byte_ids: ByteIds) -> None:
    example = adapter.encode(tok, [Seg("q", False), Seg("abcdef<|endoftext|>", True)], source="s", record_id="r")
    cut, reason = adapter.fit(example, max_length=4, overlong="truncate")
    assert cut is not None and cut.labels == byte_ids("abcd") and cut.input_ids == byte_ids("q")
    assert reason == "answer truncated to max_length"
    both = adapter.encode(tok, [Seg("qqqqqq", False), Seg("abcdef", True)], source="s", record_id="r")
    assert adapter.fit(both, max_length=4, overlong="truncate")[1] == "prompt and answer truncated to max_length"
    assert adapter.fit(both, max_length=4, overlong="drop") == (None, "longer than max_length")
    fits = adapter.encode(tok, [Seg("qqqq", False), Seg("abc", True)], source="s", record_id="r")
    assert adapter.fit(fits, max_length=4, overlong="drop") == (fits, None)  # each side within 4 tokens


# --- batches, loss, batching modes ---------------------------------------------------------------


def test_collate_pads_each_side_to_its_own_width(adapter: Seq2SeqAdapter, tok: Any, byte_ids: ByteIds) -> None:
    a = adapter.encode(tok, [Seg("long prompt", False), Seg("x", True)], source="s", record_id="a")
    b = adapter.encode(tok, [Seg("p", False), Seg("longer answer", True)], source="s", record_id="b")
    batch = adapter.collate(tok, [a, b])
    assert batch["input_ids"].shape == (2, 11) and batch["labels"].shape == (2, 14)
    assert batch["input_ids"][1].tolist() == byte_ids("p") + [PAD] * 10
    assert batch["attention_mask"].sum(dim=1).tolist() == [11, 1]
    assert batch["labels"][0].tolist() == byte_ids("x") + [EOS] + [-100] * 12
    assert (int(batch["loss_tokens"]), int(batch["real_tokens"]), int(batch["num_examples"])) == (16, 12, 2)
    assert batch["record_ids"] == ["a", "b"]


def test_loss_matches_transformers_own_seq2seq_loss(adapter: Seq2SeqAdapter, tok: Any) -> None:
    torch.manual_seed(0)
    model = adapter.load_model(tok).eval()
    examples = [
        adapter.encode(
            tok, [Seg(f"prompt {i}" * (i + 1), False), Seg("answer" * i, True)], source="s", record_id=str(i)
        )
        for i in range(3)
    ]
    batch = adapter.collate(tok, examples)
    with torch.no_grad():
        loss_sum, count = adapter.loss_sum(model, batch)
        # transformers builds the decoder inputs from labels itself (shift right behind decoder_start_token_id)
        reference = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss
        per_example, counts = adapter.loss_by_example(model, batch)
    assert int(count) == int(batch["loss_tokens"]) == 1 + 7 + 13
    assert torch.allclose(loss_sum / count, reference, rtol=1e-5)
    assert counts.tolist() == [1, 7, 13] and torch.allclose(per_example.sum(), loss_sum, rtol=1e-6)


def test_packed_batching_is_refused_and_auto_falls_back(adapter: Seq2SeqAdapter) -> None:
    assert adapter.supports_packing is False
    with pytest.raises(ift.RecipeError, match="trainer.batching: 'packing' needs an adapter that supports packed"):
        resolve_batching("packing", adapter, SimpleNamespace(type="cuda"))
    assert resolve_batching("auto", adapter, SimpleNamespace(type="cuda")) == "length-grouped"


def test_a_decoder_only_config_is_a_recipe_error(tmp_path: Path) -> None:
    config = Seq2SeqConfig(tokenizer="byte-level", device="cpu", from_config={"model_type": "llama"})
    adapter = Seq2SeqAdapter(config, base_dir=tmp_path)
    with pytest.raises(ift.RecipeError, match="model.from_config: Unrecognized configuration class"):
        adapter.load_model(adapter.load_tokenizer())


# --- generation ----------------------------------------------------------------------------------


class ScriptedModel(torch.nn.Module):
    """Stands in for a model whose greedy output is known: each row is the decoder start, then a script."""

    def __init__(self, rows: list[list[int]]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.rows = rows
        self.config = SimpleNamespace(decoder_start_token_id=PAD)
        self.seen: list[dict[str, Any]] = []

    def generate(self, **kwargs: Any) -> torch.Tensor:
        self.seen.append(kwargs)
        batch = self.rows[: kwargs["input_ids"].shape[0]]
        self.rows = self.rows[len(batch) :]
        width = max(len(r) for r in batch)
        return torch.tensor([[PAD, *r, *[PAD] * (width - len(r))] for r in batch])


def test_generation_returns_the_answer_only_cut_at_stop_strings(
    adapter: Seq2SeqAdapter, tok: Any, byte_ids: ByteIds
) -> None:
    model = ScriptedModel(
        [byte_ids("yes###more") + [EOS], byte_ids(" no ") + [EOS] + byte_ids("junk"), byte_ids("abc")]
    )
    out = adapter.generate(model, tok, ["p1", "prompt two", "p3"], max_new_tokens=8, batch_size=2, stop=["###"])
    assert out == ["yes", "no", "abc"]
    first = model.seen[0]
    assert first["input_ids"].tolist() == [byte_ids("p1") + [PAD] * 8, byte_ids("prompt two")]
    assert first["attention_mask"].sum(dim=1).tolist() == [2, 10]
    assert (first["do_sample"], first["num_beams"], first["decoder_start_token_id"]) == (False, 1, PAD)


# --- training, saving, reloading -------------------------------------------------------------------


class Silent:
    total = 0

    def step(self, *args: Any) -> None:
        pass

    def write(self, message: str) -> None:
        pass


def train(adapter: Seq2SeqAdapter, steps: int = 4) -> tuple[Any, Any, list[ift.EncodedExample]]:
    tokenizer = adapter.load_tokenizer()
    torch.manual_seed(0)
    model = adapter.load_model(tokenizer)
    data = [
        adapter.encode(
            tokenizer, [Seg(f"Reverse: {w}\n", False), Seg(w[::-1] + "<|endoftext|>", True)], source="s", record_id=w
        )
        for w in ("abc", "dog", "sun", "map", "red", "toy")
    ]
    ctx = ift.TrainContext(
        model=model,
        tokenizer=tokenizer,
        adapter=adapter,
        train_examples=data,
        eval_examples=[],
        seed=0,
        run_dir=adapter.base_dir,
        log_step=lambda e: None,
        evaluate=lambda m, s: {},
        progress=Silent(),
    )
    trainer = SFTTrainer(
        SFTConfig(
            batch_size=3, max_steps=steps, learning_rate=5e-2, warmup_ratio=0.0, scheduler="constant", log_every=steps
        )
    )
    return trainer.train(ctx).model, tokenizer, data


def forward_logits(model: Any, adapter: Seq2SeqAdapter, batch: dict[str, Any]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).logits


@pytest.mark.parametrize(
    "peft",
    [
        {"method": "lora", "r": 4, "alpha": 8},
        {"method": "prompt-tuning", "num_virtual_tokens": 3, "init_text": "Reverse"},
    ],
)
def test_peft_training_saves_an_adapter_plain_peft_reloads(tmp_path: Path, peft: dict[str, Any]) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    adapter = make_adapter(tmp_path, peft=peft)
    model, tokenizer, data = train(adapter)
    adapter.save(model, tokenizer, tmp_path / "model")
    folder = tmp_path / "model"
    assert json.loads((folder / "adapter_config.json").read_text())["task_type"] == "SEQ_2_SEQ_LM"
    base = AutoModelForSeq2SeqLM.from_pretrained(folder / "base_model")
    reloaded = PeftModel.from_pretrained(base, folder).eval()
    batch = adapter.collate(tokenizer, data[:4])
    assert torch.allclose(
        forward_logits(model, adapter, batch), forward_logits(reloaded, adapter, batch), atol=1e-5, rtol=0
    )
    # ift's own loader gives the same model back, and generation through it returns strings
    loaded, loaded_tokenizer = adapter.load_trained(folder)
    prompts = ["Reverse: abc\n", "Reverse: xy\n"]
    generated = adapter.generate(loaded, loaded_tokenizer, prompts, max_new_tokens=4, batch_size=2)
    assert generated == adapter.generate(model, tokenizer, prompts, max_new_tokens=4, batch_size=2)
    assert all(isinstance(g, str) and len(g.encode()) <= 4 for g in generated)


def test_adalora_allocates_ranks_and_charges_its_penalty_in_both_losses(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path, peft={"method": "adalora", "init_r": 4, "target_r": 2, "tinit": 1, "tfinal": 1})
    model, tokenizer, data = train(adapter, steps=4)
    config = model.peft_config["default"]
    modules = sum(1 for n, _ in model.named_parameters() if n.endswith("lora_E.default"))
    assert (config.total_step, config.tinit, config.tfinal) == (4, 1, 1) and modules > 0
    assert sum(sum(v) for v in config.rank_pattern.values()) == 2 * modules  # the final budget: target_r each
    batch = adapter.collate(tokenizer, data[:3])
    model.train()  # T5 from this config has dropout: compare the two losses from one forward pass each, seeded
    torch.manual_seed(1)
    total, count = adapter.loss_sum(model, batch)
    torch.manual_seed(1)
    sums, counts = adapter.loss_by_example(model, batch)
    penalty = peft_methods.training_penalty(model)
    assert float(penalty) > 0 and torch.allclose(sums.sum(), total, rtol=1e-5) and int(counts.sum()) == int(count)


RECIPE = """
[run]
name = "t5"
seed = 3

[[data]]
source = "jsonl"
path = "data.jsonl"

[template]
name = "alpaca"

[model]
adapter = "seq2seq"
tokenizer = "byte-level"
from_config = {{ model_type = "t5", d_model = 32, d_ff = 64, d_kv = 16, num_heads = 2, num_layers = 1 }}

[trainer]
name = "sft"
max_steps = 4
batch_size = 4
learning_rate = 1e-3
log_every = 2
max_length = 48

[eval]
fraction = 0.25
metrics = ["loss", "exact_match", "rouge_l"]
max_new_tokens = 4
"""


def test_a_tiny_run_leaves_a_model_plain_transformers_loads(tmp_path: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from ift.cli import main

    words = ["abc", "dog", "cat", "xyz", "sun", "map", "red", "toy", "fig", "jam", "owl", "pen"]
    rows = [{"instruction": f"Uppercase: {w}", "input": "", "output": w.upper()} for w in words]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "recipe.toml").write_text(RECIPE.format())
    out = tmp_path / "run"
    assert main(["run", str(tmp_path / "recipe.toml"), "--output-dir", str(out)]) == 0

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["summary"].startswith("a t5 encoder-decoder model built from model.from_config")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final"]["overall"]["n"] == 3 and 0 <= metrics["final"]["overall"]["exact_match"] <= 1
    assert metrics["final"]["overall"]["loss"] < metrics["baseline"]["overall"]["loss"]
    assert all(isinstance(s["final"], str) for s in metrics["samples"])
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    steps = [e for e in events if "step" in e]
    assert [e["step"] for e in steps] == [2, 4] and all(e["trainable_tokens"] > 0 for e in steps)

    model = AutoModelForSeq2SeqLM.from_pretrained(out / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert type(model).__name__ == "T5ForConditionalGeneration" and tokenizer.eos_token == "<|endoftext|>"
    ids = tokenizer("### Instruction:\nUppercase: abc\n\n### Response:\n", return_tensors="pt")
    generated = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert generated[0, 0].item() == model.config.decoder_start_token_id == PAD
