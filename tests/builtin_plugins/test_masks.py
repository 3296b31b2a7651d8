"""The mask problems of issue 12, one test each: opening greetings, headers merged with answers, trimmed
offsets, indented templates, whitespace before BOS, templates without end-of-turn text, refused conversations,
mask controls (train_on, "train": false, {% generation %}), tool messages, and ``preview --tokens``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_chat_template_corpus import tokenizer as corpus_tokenizer  # same folder (rootdir-less test modules)

import ift
from ift.builtin_plugins.byte_tokenizer import build_byte_tokenizer
from ift.builtin_plugins.causal_lm import CausalLMAdapter
from ift.builtin_plugins.inference.runs import conversation_prompt, stop_texts
from ift.builtin_plugins.renderers import ChatMLRenderer, ChatTemplateRenderer, RenderError
from ift.builtin_plugins.token_labels import labels_from_offsets
from ift.data import DataReport, bad_record_policy, encode_records
from ift.errors import DataError
from ift.records import InstructionRecord, Message, normalize_row

M = Message


def chat(tok: Any, **config: Any) -> ChatTemplateRenderer:
    renderer = ChatTemplateRenderer(ChatTemplateRenderer.Config(**config), base_dir=Path("."))
    renderer.bind(tok)
    return renderer


def adapter(adds_bos: bool = False) -> CausalLMAdapter:
    a = CausalLMAdapter(CausalLMAdapter.Config(name_or_path="unused"), base_dir=Path("."))
    a._adds_bos = adds_bos
    return a


def trained_text(segments: list[ift.Segment]) -> list[str]:
    return [s.text for s in segments if s.trainable]


def trained_tokens(tok: Any, example: ift.EncodedExample) -> list[str]:
    return [tok.decode([i]) for i, label in zip(example.input_ids, example.labels, strict=True) if label != -100]


def test_an_opening_assistant_greeting_is_trained() -> None:
    record = InstructionRecord("g", "s", [M("assistant", "Welcome!"), M("user", "hi"), M("assistant", "Hello")])
    segments = chat(build_byte_tokenizer()).render(record)
    assert trained_text(segments) == ["Welcome!<|im_end|>", "Hello<|im_end|>"]


def test_header_tokens_merged_across_spaces_are_never_trained() -> None:
    tok = corpus_tokenizer("nosplit", "vicuna", "vicuna.compact.jinja")
    record = InstructionRecord("v", "s", [M("user", "Repeat exactly: yes please"), M("assistant", "yes please")])
    example = adapter().encode(tok, chat(tok).render(record), source="s", record_id="v")
    tokens = trained_tokens(tok, example)
    assert not any("ASSISTANT" in t or ":" in t for t in tokens)
    assert "".join(tokens).endswith("</s>")
    assert example.straddling == 1  # 'ASSISTANT: y...' or ': y...' reaches into the answer


def test_space_tokens_inside_an_answer_are_trained_when_offsets_are_trimmed() -> None:
    tok = corpus_tokenizer("bytelevel-trim", "chatml", "chatml.compact.jinja")
    record = InstructionRecord("w", "s", [M("user", "q"), M("assistant", "a  b   c")])
    example = adapter().encode(tok, chat(tok).render(record), source="s", record_id="w")
    assert "".join(trained_tokens(tok, example)) == "a  b   c<|im_end|>"


def test_labels_from_offsets_policy() -> None:
    mask = bytearray(b"\x00\x00\x00\x01\x01\x01")  # 'AB:' prompt, 'xyz' answer
    result = labels_from_offsets([1, 2, 3, 4], [(0, 2), (2, 4), (4, 4), (4, 6)], mask)
    assert result.labels == [-100, -100, 3, 4]  # (2, 4) straddles; the empty token at 4 lies inside the answer
    assert result.straddling == [1]


def test_an_indented_template_is_trained_not_refused() -> None:
    tok = corpus_tokenizer("bytelevel", "zephyr", "zephyr.jinja")
    record = InstructionRecord(
        "z", "s", [M("user", "hi"), M("assistant", "Hello"), M("user", "bye"), M("assistant", "Bye")]
    )
    renderer = chat(tok)
    assert trained_text(renderer.render(record)) == ["Hello</s>", "Bye</s>"]
    assert any("whitespace only" in n for n in renderer.notices())
    prompt = renderer.prompt(record)  # what ift generate gives the model: the text training saw before 'Bye'
    assert "".join(s.text for s in renderer.render(record)).startswith(prompt + "Bye</s>")


def test_whitespace_before_bos_does_not_give_a_second_bos() -> None:
    tok = corpus_tokenizer("bytelevel-bos", "llama-2-chat", "llama-2-chat.jinja")
    record = InstructionRecord("b", "s", [M("user", "hi"), M("assistant", "Hello")])
    segments = chat(tok).render(record)
    text = "".join(s.text for s in segments)
    assert text[0].isspace() and text.lstrip().startswith("<s>")
    example = adapter(adds_bos=True).encode(tok, segments, source="s", record_id="b")
    assert example.input_ids.count(tok.bos_token_id) == 1
    assert example.input_ids == tok(text, add_special_tokens=False)["input_ids"]


def test_a_template_without_end_of_turn_text_trains_eos_and_stops_on_it() -> None:
    tok = corpus_tokenizer("bytelevel", "falcon-instruct", "falcon-instruct.compact.jinja")
    renderer = chat(tok)
    record = InstructionRecord(
        "f", "s", [M("user", "hi"), M("assistant", "Hello"), M("user", "more"), M("assistant", "Sure")]
    )
    assert trained_text(renderer.render(record)) == ["Hello</s>", "Sure</s>"]
    assert any("ift inserts the tokenizer's EOS '</s>'" in n for n in renderer.notices())
    assert stop_texts(renderer) == ["</s>"]
    assert conversation_prompt(renderer, [M("user", "hi")]).endswith("Assistant: ")


def test_prompt_of_a_record_without_an_assistant_turn_is_a_clear_error() -> None:
    renderer = chat(build_byte_tokenizer())
    with pytest.raises(RenderError, match="record 'u' has no assistant turn"):
        renderer.prompt(InstructionRecord("u", "s", [M("user", "hi")]))


def test_train_on_last_assistant_and_per_message_train_false() -> None:
    tok = build_byte_tokenizer()
    record = InstructionRecord(
        "t",
        "s",
        [
            M("user", "a"),
            M("assistant", "one"),
            M("user", "b"),
            M("assistant", "two"),
            M("user", "c"),
            M("assistant", "three"),
        ],
    )
    assert trained_text(chat(tok, train_on="last_assistant").render(record)) == ["three<|im_end|>"]
    messages, _ = normalize_row(
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "one", "train": False},
                {"role": "user", "content": "b"},
                {"role": "assistant", "content": "two"},
            ]
        },
        "messages",
    )
    marked = InstructionRecord("t2", "s", messages)
    assert trained_text(chat(tok).render(marked)) == ["two<|im_end|>"]
    text_renderer = ChatMLRenderer(ChatMLRenderer.Config(), base_dir=Path("."))
    assert trained_text(text_renderer.render(marked)) == ["two<|im_end|>"]
    assert marked.to_dict()["messages"][1]["train"] is False


def test_generation_blocks_in_a_chat_template_decide_the_mask() -> None:
    tok = build_byte_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}A: {% generation %}"
        "{{ m['content'] }}!{% endgeneration %}\n{% else %}U: {{ m['content'] }}\n{% endif %}"
        "{% endfor %}"
    )
    record = InstructionRecord("g", "s", [M("user", "hi"), M("assistant", "yo")])
    assert trained_text(chat(tok).render(record)) == ["yo!"]


def test_tool_calls_are_trained_and_tool_results_never() -> None:
    tok = corpus_tokenizer("bytelevel", "qwen2.5-instruct", "qwen2.5-instruct.jinja")
    messages, _ = normalize_row(
        {
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
                    ],
                },
                {"role": "tool", "content": "sunny"},
                {"role": "assistant", "content": "It is sunny."},
            ]
        },
        "messages",
    )
    record = InstructionRecord("tool", "s", messages)
    segments = chat(tok).render(record)
    assert "".join(s.text for s in segments) == tok.apply_chat_template([m.to_dict() for m in messages], tokenize=False)
    assert trained_text(segments) == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
        "It is sunny.<|im_end|>",
    ]
    assert not any("sunny\n</tool_response>" in t for t in trained_text(segments))


def test_a_conversation_the_template_refuses_is_a_record_error_or_skipped(
    make_recipe: Callable[..., Any], tmp_path: Path
) -> None:
    tok = corpus_tokenizer("bytelevel", "chatml", "chatml.compact.jinja")
    renderer = chat(tok)
    good = InstructionRecord("d.jsonl:0", "d", [M("user", "q"), M("assistant", "a")], metadata={"row": 0})
    bad = InstructionRecord(
        "d.jsonl:2", "d", [M("user", "q"), M("user", "q2"), M("assistant", "a")], metadata={"row": 1, "line": 2}
    )
    cfg = make_recipe([{"source": "jsonl", "path": "d.jsonl", "name": "d"}]).trainer_config
    for policy in ("error", "skip"):
        recipe = make_recipe([{"source": "jsonl", "path": "d.jsonl", "name": "d", "on_bad_rows": policy}])
        report = DataReport()
        if policy == "error":
            with pytest.raises(
                DataError,
                match=r"d\.jsonl:2: source 'd', record 'd\.jsonl:2': "
                r"the chat template refuses .*alternate",
            ):
                encode_records(
                    [good, bad], renderer, adapter(), tok, cfg, "train", report, bad_records=bad_record_policy(recipe)
                )
        else:
            examples, _ = encode_records(
                [good, bad], renderer, adapter(), tok, cfg, "train", report, bad_records=bad_record_policy(recipe)
            )
            assert [e.record_id for e in examples] == ["d.jsonl:0"]
            assert report.encoding["train"]["reasons"] == {"the template refuses the record": 1}


def test_straddling_tokens_are_counted_in_the_report_and_warned_once(make_recipe: Callable[..., Any]) -> None:
    tok = corpus_tokenizer("nosplit", "vicuna", "vicuna.compact.jinja")
    records = [
        InstructionRecord(f"r{i}", "d", [M("user", "Repeat exactly: yes please"), M("assistant", "yes please")])
        for i in range(3)
    ]
    report = DataReport()
    cfg = make_recipe().trainer_config
    encode_records(records, chat(tok), adapter(), tok, cfg, "train", report)
    info = report.encoding["train"]
    assert info["straddling"] == {"tokens": 3, "examples": 3, "by_example": {"r0": 1, "r1": 1, "r2": 1}}
    assert sum("begin in the prompt and reach into the answer" in w for w in info["warnings"]) == 1


def test_preview_tokens_lists_label_states(
    make_recipe: Callable[..., Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ift.host import PluginHost
    from ift.previewing import preview

    (tmp_path / "d.jsonl").write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "assistant", "content": "Hi there"},
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "ok"},
                ]
            }
        )
        + "\n",
        encoding="utf-8",
    )
    recipe = make_recipe(template={"name": "chat"}, eval={"fraction": 0, "metrics": []})
    shown = preview(recipe, PluginHost(), 1, color=False, tokens=True)
    rows = shown[0]["token_rows"]
    assert "".join(r["text"] for r in rows if r["trained"]) == "Hi there<|im_end|>ok<|im_end|>"
    assert not any(r["straddles"] for r in rows)
    out = capsys.readouterr().out
    assert "'<|im_end|>'" in out and "trained" in out
