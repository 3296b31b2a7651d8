"""The causal-lm adapter: config rules, the byte tokenizer, exact ids and label masks from segments, the
length policy, collation and the summed loss on a tiny model built from a config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import ift
from ift.builtin_plugins.causal_lm import CausalLMAdapter, CausalLMConfig
from ift.builtin_plugins.renderers import AlpacaRenderer, ChatMLRenderer, ChatTemplateRenderer
from ift.records import InstructionRecord, Message

Seg = ift.Segment
IGNORE = -100
TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}
ByteIds = Callable[[str], list[int]]


@pytest.fixture
def adapter(tmp_path: Path) -> CausalLMAdapter:
    config = CausalLMConfig(from_config=TINY_LLAMA, tokenizer="byte-level", device="cpu", dtype="float32")
    return CausalLMAdapter(config, base_dir=tmp_path)


@pytest.fixture
def tok(adapter: CausalLMAdapter) -> Any:
    return adapter.load_tokenizer()


def expected_labels(segments: list[ift.Segment], byte_ids: ByteIds) -> list[int]:
    labels: list[int] = []
    for seg in segments:
        ids = byte_ids(seg.text)
        labels.extend(ids if seg.trainable else [IGNORE] * len(ids))
    return labels


# --- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "set exactly one of name_or_path (a pretrained model) or from_config"),
        (
            {"name_or_path": "m", "from_config": {"model_type": "llama"}, "tokenizer": "byte-level"},
            "set exactly one of name_or_path",
        ),
        ({"from_config": {"hidden_size": 8}, "tokenizer": "byte-level"}, "from_config needs model_type"),
        ({"from_config": {"model_type": "llama"}}, "a model built from_config needs tokenizer = 'byte-level'"),
        ({"name_or_path": "m", "peft": {"method": "lora", "r": 0}}, "greater than 0"),
        ({"name_or_path": "m", "dtype": "fp8"}, "Input should be 'auto', 'float32', 'bfloat16' or 'float16'"),
    ],
)
def test_config_rules(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CausalLMConfig(**options)


# --- tokenizer ---------------------------------------------------------------------------------


def test_byte_tokenizer(tok: Any, byte_ids: ByteIds) -> None:
    assert tok.is_fast
    assert len(tok) == 260
    assert (tok.eos_token, tok.eos_token_id) == ("<|endoftext|>", 257)
    assert (tok.pad_token, tok.pad_token_id) == ("<|pad|>", 256)
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [258, 259]
    assert tok.bos_token_id is None
    text = "Héllo, wörld!\n\t<|im_end|> ok ☕"
    assert tok(text, add_special_tokens=False)["input_ids"] == byte_ids(text)
    assert tok.decode(byte_ids(text)) == text
    assert byte_ids("H\n ") == [39, 198, 220]


# --- encode: the trainable boundary ------------------------------------------------------------


def test_encode_alpaca_labels_exactly_answer_and_eos(adapter: CausalLMAdapter, tok: Any, byte_ids: ByteIds) -> None:
    renderer = AlpacaRenderer(AlpacaRenderer.Config(), base_dir=Path("."))
    renderer.bind(tok)
    record = InstructionRecord("r1", "src", [Message("user", "Add 2 and 2."), Message("assistant", "4")])
    segments = renderer.render(record)
    text = "".join(s.text for s in segments)
    example = adapter.encode(tok, segments, source="src", record_id="r1")

    assert example.input_ids == tok(text, add_special_tokens=False)["input_ids"] == byte_ids(text)
    prompt = "### Instruction:\nAdd 2 and 2.\n\n### Response:\n"
    # "4" is byte 0x34 -> id 0x34 - 33 = 19, then <|endoftext|> = 257; "\n\n" after EOS is not trained
    assert example.labels == [IGNORE] * len(prompt) + [19, 257] + [IGNORE, IGNORE]
    assert (example.source, example.record_id, example.truncated) == ("src", "r1", False)
    assert example.trainable_tokens == 2


def test_encode_chat_template_conversation(adapter: CausalLMAdapter, tok: Any, byte_ids: ByteIds) -> None:
    renderer = ChatTemplateRenderer(ift.ComponentConfig(), base_dir=Path("."))
    renderer.bind(tok)
    record = InstructionRecord(
        "c1",
        "src",
        [
            Message("system", "Be brief."),
            Message("user", "Hi"),
            Message("assistant", "Hello"),
            Message("user", "Bye"),
            Message("assistant", "See you"),
        ],
    )
    segments = renderer.render(record)
    full = tok.apply_chat_template([m.to_dict() for m in record.messages], tokenize=False)
    example = adapter.encode(tok, segments, source="src", record_id="c1")

    assert example.input_ids == tok(full, add_special_tokens=False)["input_ids"]
    assert example.input_ids == byte_ids(full)
    first_prompt = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    second_prompt = "\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    hello = [39, 68, 75, 75, 78, 259]  # H e l l o <|im_end|>
    see_you = [50, 68, 68, 220, 88, 78, 84, 259]  # S e e (space) y o u <|im_end|>
    assert example.labels == (
        [IGNORE] * len(byte_ids(first_prompt)) + hello + [IGNORE] * len(byte_ids(second_prompt)) + see_you + [IGNORE]
    )
    assert hello == byte_ids("Hello<|im_end|>") and see_you == byte_ids("See you<|im_end|>")
    trained = [t for t in example.labels if t != IGNORE]
    assert tok.decode(trained) == "Hello<|im_end|>See you<|im_end|>"


def test_encode_multibyte_characters_keep_the_boundary(adapter: CausalLMAdapter, tok: Any, byte_ids: ByteIds) -> None:
    segments = [Seg("Ünïcode → ", False), Seg("café ☕<|im_end|>", True), Seg("\n", False)]
    example = adapter.encode(tok, segments, source="s", record_id="u")
    assert example.input_ids == byte_ids("Ünïcode → café ☕<|im_end|>\n")
    assert example.labels == expected_labels(segments, byte_ids)
    assert len(example.input_ids) == len("Ünïcode → café ☕".encode()) + 2


def test_encode_of_chatml_equals_segment_by_segment(adapter: CausalLMAdapter, tok: Any, byte_ids: ByteIds) -> None:
    renderer = ChatMLRenderer(ChatMLRenderer.Config(), base_dir=Path("."))
    record = InstructionRecord(
        "r",
        "s",
        [Message("user", "2+2?"), Message("assistant", "4"), Message("user", "3+3?"), Message("assistant", "6")],
    )
    segments = renderer.render(record)
    example = adapter.encode(tok, segments, source="s", record_id="r")
    assert example.labels == expected_labels(segments, byte_ids)
    assert tok.decode([t for t in example.labels if t != IGNORE]) == "4<|im_end|>6<|im_end|>"


# --- length policy -----------------------------------------------------------------------------


def example(n_prompt: int, n_answer: int) -> ift.EncodedExample:
    ids = list(range(n_prompt + n_answer))
    return ift.EncodedExample(ids, [IGNORE] * n_prompt + ids[n_prompt:], "s", "r")


def test_fit_keeps_examples_that_fit(adapter: CausalLMAdapter) -> None:
    ex = example(3, 2)
    assert adapter.fit(ex, max_length=5, overlong="truncate") == (ex, None)
    assert adapter.fit(ex, max_length=5, overlong="drop") == (ex, None)


def test_fit_truncates(adapter: CausalLMAdapter) -> None:
    cut, reason = adapter.fit(example(3, 4), max_length=5, overlong="truncate")
    assert reason == "truncated to max_length"
    assert cut is not None
    assert (cut.input_ids, cut.labels, cut.truncated) == ([0, 1, 2, 3, 4], [IGNORE] * 3 + [3, 4], True)
    assert cut.trainable_tokens == 2


def test_fit_drops_when_asked_or_when_nothing_trainable_is_left(adapter: CausalLMAdapter) -> None:
    assert adapter.fit(example(3, 4), max_length=5, overlong="drop") == (None, "longer than max_length")
    assert adapter.fit(example(6, 2), max_length=5, overlong="truncate") == (
        None,
        "no trainable tokens left after truncation",
    )


# --- batches and loss on a tiny model ----------------------------------------------------------


def test_collate_pads_right_and_masks_padding(adapter: CausalLMAdapter, tok: Any) -> None:
    a = ift.EncodedExample([5, 6, 7], [IGNORE, 6, 7], "s", "a")
    b = ift.EncodedExample([8], [8], "s", "b")
    batch = adapter.collate(tok, [a, b])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 256, 256]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_loss_sum_counts_only_trainable_tokens(adapter: CausalLMAdapter, tok: Any) -> None:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = adapter.load_model(tok)
    assert model.get_input_embeddings().num_embeddings == len(tok)
    a = ift.EncodedExample([10, 11, 12, 13], [IGNORE, IGNORE, 12, 13], "s", "a")
    b = ift.EncodedExample([20, 21], [IGNORE, 257], "s", "b")
    batch = adapter.collate(tok, [a, b])
    loss, count = adapter.loss_sum(model, batch)
    assert int(count) == 3

    with torch.no_grad():
        logits_a = model(input_ids=torch.tensor([a.input_ids])).logits[0].float()
        logits_b = model(input_ids=torch.tensor([b.input_ids])).logits[0].float()
    expected = F.cross_entropy(logits_a[1:3], torch.tensor([12, 13]), reduction="sum") + F.cross_entropy(
        logits_b[0:1], torch.tensor([257]), reduction="sum"
    )
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_describe_says_plainly_that_the_model_is_random(adapter: CausalLMAdapter) -> None:
    described = adapter.describe()
    assert described["origin"] == "from_config" and described["tokenizer"] == "byte-level"
    assert "RANDOM weights (no pretrained model is used)" in described["summary"]
    assert "byte-level tokenizer built in (no download)" in described["summary"]


# --- generation --------------------------------------------------------------------------------


class ScriptedModel:
    """Stands in for a model: ``generate`` appends the same scripted ids to every prompt."""

    def __init__(self, continuation: list[int]) -> None:
        import torch

        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.continuation = continuation
        self.training = True
        self.calls: list[dict[str, Any]] = []

    def parameters(self) -> Any:
        return iter([self.weight])

    def eval(self) -> None:
        self.training = False

    def train(self, mode: bool = True) -> None:
        self.training = mode

    def generate(self, input_ids: Any, attention_mask: Any, **kwargs: Any) -> Any:
        import torch

        self.calls.append({"input_ids": input_ids.tolist(), "attention_mask": attention_mask.tolist(), **kwargs})
        extra = torch.tensor([self.continuation] * input_ids.shape[0])
        return torch.cat([input_ids, extra], dim=1)


def test_generate_left_pads_and_cuts_at_stop_tokens_and_strings(
    adapter: CausalLMAdapter, tok: Any, byte_ids: ByteIds
) -> None:
    model = ScriptedModel(byte_ids(" Paris.\n### more<|im_end|>junk"))
    answers = adapter.generate(model, tok, ["ab", "c"], max_new_tokens=5, batch_size=8, stop=["<|im_end|>", "\n###"])
    assert answers == ["Paris.", "Paris."]
    [call] = model.calls
    assert call["input_ids"] == [byte_ids("ab"), [256] + byte_ids("c")]  # left padding with <|pad|>
    assert call["attention_mask"] == [[1, 1], [0, 1]]
    assert call["eos_token_id"] == [257, 259]  # EOS and the single-token stop string
    assert (call["max_new_tokens"], call["do_sample"], call["pad_token_id"]) == (5, False, 256)
    assert model.training  # training mode is restored


def test_generate_stops_at_eos_and_batches(adapter: CausalLMAdapter, tok: Any, byte_ids: ByteIds) -> None:
    model = ScriptedModel(byte_ids("yes<|endoftext|>no"))
    assert adapter.generate(model, tok, ["p1", "p2", "p3"], max_new_tokens=4, batch_size=2) == ["yes"] * 3
    assert len(model.calls) == 2


def test_batched_greedy_generation_equals_one_at_a_time(adapter: CausalLMAdapter, tok: Any) -> None:
    import torch

    torch.manual_seed(0)
    model = adapter.load_model(tok)
    prompts = ["a", "a much longer prompt, so the others are padded", "xyz"]
    batched = adapter.generate(model, tok, prompts, max_new_tokens=6, batch_size=3)
    alone = [adapter.generate(model, tok, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == alone
    assert len(batched) == 3 and all(isinstance(a, str) for a in batched)


# --- package: model paths ------------------------------------------------------------------------


def test_a_model_shipped_in_an_installed_package_loads_by_package_name(
    adapter: CausalLMAdapter, tok: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    import torch

    torch.manual_seed(0)
    model = adapter.load_model(tok)
    site = tmp_path / "site"
    folder = site / "ift_test_packaged_lm" / "weights"
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    # importing the package would fail: the model folder must be found without running its code
    (site / "ift_test_packaged_lm" / "__init__.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(site))

    packaged = CausalLMAdapter(
        CausalLMConfig(name_or_path="package:ift_test_packaged_lm", device="cpu", dtype="float32"),
        base_dir=tmp_path / "elsewhere",
    )
    loaded = packaged.load_model(packaged.load_tokenizer())  # the tokenizer comes from the package too
    for (name, want), (_, got) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(want, got), name
    assert "ift_test_packaged_lm" not in sys.modules
    assert packaged.describe()["origin"] == "package:ift_test_packaged_lm"

    missing = CausalLMAdapter(
        CausalLMConfig(name_or_path="package:ift_test_missing_lm", device="cpu"), base_dir=tmp_path
    )
    with pytest.raises(
        ift.RunError,
        match="model.name_or_path = 'package:ift_test_missing_lm': the Python "
        "package 'ift_test_missing_lm' is not installed",
    ):
        missing.load_tokenizer()
