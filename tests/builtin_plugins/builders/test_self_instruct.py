"""The ``self-instruct`` builder: every filter counts its rejections, the best candidates are kept first,
an interrupted build resumes without duplicates, and a real (tiny, random) model runs the pipeline."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

import ift
from ift.builtin_plugins.builders.instruct_state import BuildState
from ift.builtin_plugins.builders.self_instruct import SelfInstructConfig, SelfInstructSource

DATA = Path(__file__).resolve().parents[2] / "data" / "builders"
TINY = {
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
}
MODEL = {"tokenizer": "byte-level", "from_config": TINY, "device": "cpu"}

# What the fake model writes after each instruction prompt: one line per candidate.
LINES = [
    "Compose a brief poem describing the sea.",  # a paraphrase of a seed below the ROUGE-L threshold
    "Write a short poem about the ocean.",  # above it
    "Draw a picture of a cat.",  # blocklisted
    "Hi.",  # too short
    "the the the the the",  # a loop: repetitive
    "Explain why the sky is blue.",  # the fake model writes no output for it: invalid instance
    "List three fruits that are red.",
]


def config(tmp_path: Path, **options: Any) -> SelfInstructConfig:
    return SelfInstructConfig.model_validate(
        {"seeds": str(DATA / "seed_tasks.jsonl"), "model": MODEL, "work_dir": str(tmp_path / "work"), **options}
    )


def source(tmp_path: Path, generate: Any, **options: Any) -> SelfInstructSource:
    return SelfInstructSource(config(tmp_path, **options), source_name="gen", base_dir=tmp_path, generate=generate)


def fixed_lines(prompts: list[str], *, max_new_tokens: int, stop: list[str]) -> list[str]:
    if prompts and prompts[0].endswith("Input:"):
        return [" none\nOutput: " + ("" if "sky" in p.rsplit("Task: ", 1)[1] else "An answer.") for p in prompts]
    return ["\n".join(LINES) for _ in prompts]


def test_each_filter_counts_its_rejections_and_the_best_are_kept(tmp_path: Path) -> None:
    src = source(
        tmp_path,
        fixed_lines,
        task_description="Write poems and explain nature",
        prompts_per_round=2,
        num_instructions=10,
        max_rounds=1,
    )
    records = list(src.records())
    assert [(r.id, r.messages[0].content, r.answer, r.metadata["quality"]) for r in records] == [
        ("gen-0000-0000", "Compose a brief poem describing the sea.", "An answer.", 0.85),
        ("gen-0000-0006", "List three fruits that are red.", "An answer.", 0.7),
    ]
    assert {r.source for r in records} == {"gen"}
    # 2 prompts x 7 lines; the second prompt's copies are too similar to what the first one kept
    assert src.stats == {
        "target": 10,
        "rounds": 1,
        "candidates": 14,
        "kept": 2,
        "rejected": {
            "blocklisted keyword": 2,
            "invalid instance": 2,
            "repetitive": 2,
            "too short": 2,
            "too similar": 4,
        },
    }
    assert (
        "(kept 2 of 14 candidates in 1 rounds; rejected: blocklisted keyword 2, invalid instance 2, "
        "repetitive 2, too short 2, too similar 4)" in src.fingerprint()
    )
    lines = [json.loads(line) for line in (tmp_path / "work" / "state.jsonl").read_text().splitlines()]
    similar = [e for e in lines if e.get("reason") == "too similar"]
    assert [(e["index"], e["similar_to"], e["rouge_l"]) for e in similar] == [
        (1, "Write a short poem about the sea.", 0.8571),
        (8, "Write a short poem about the sea.", 0.8571),
        (7, "Compose a brief poem describing the sea.", 1.0),
        (13, "List three fruits that are red.", 1.0),
    ]


def unique_lines(prompts: list[str], *, max_new_tokens: int, stop: list[str]) -> list[str]:
    """A deterministic fake model: three new instructions per prompt, derived from the prompt's hash."""
    nouns = "river cloud engine garden planet violin bridge lantern desert harbor".split()
    verbs = "Describe Explain Summarize Compare List Classify Rewrite Translate".split()
    outputs = []
    for prompt in prompts:
        if prompt.endswith("Input:"):
            outputs.append(" none\nOutput: Here it is.")
            continue
        h = hashlib.sha256(prompt.encode()).digest()
        outputs.append(
            "\n".join(
                f"{verbs[h[3 * k] % 8]} the {nouns[h[3 * k + 1] % 10]} of {nouns[h[3 * k + 2] % 10]}." for k in range(3)
            )
        )
    return outputs


def decided_keys(work: Path) -> list[tuple[int, int]]:
    lines = [json.loads(line) for line in (work / "state.jsonl").read_text().splitlines()]
    return [(e["round"], e["index"]) for e in lines if e["type"] == "candidate"]


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("where", ["record:7", "record:13", "generate:4"])
def test_an_interrupted_build_resumes_without_duplicates(tmp_path: Path, monkeypatch, where: str) -> None:
    options = {"num_instructions": 12, "prompts_per_round": 2, "rouge_threshold": 0.7}
    full_src = source(tmp_path / "full", unique_lines, **options)
    full = [(r.id, r.messages[0].content) for r in full_src.records()]
    assert len(full) == 12 and full_src.stats["rounds"] > 2

    kind, after = where.split(":")
    calls = {"n": 0}

    def interrupting(fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] > int(after):
                raise Interrupt(where)
            return fn(*args, **kwargs)

        return wrapper

    if kind == "record":
        monkeypatch.setattr(BuildState, "record", interrupting(BuildState.record))
        generate = unique_lines
    else:
        generate = interrupting(unique_lines)
    with pytest.raises(Interrupt):
        list(source(tmp_path / "cut", generate, **options).records())
    monkeypatch.undo()
    interrupted_at = len(decided_keys(tmp_path / "cut" / "work"))
    assert 0 < interrupted_at < len(decided_keys(tmp_path / "full" / "work"))

    resumed_src = source(tmp_path / "cut", unique_lines, **options)
    resumed = [(r.id, r.messages[0].content) for r in resumed_src.records()]
    assert resumed == full
    assert len({i for i, _ in resumed}) == len({t for _, t in resumed}) == 12
    keys = decided_keys(tmp_path / "cut" / "work")
    assert len(keys) == len(set(keys)) and keys == decided_keys(tmp_path / "full" / "work")
    assert resumed_src.stats == full_src.stats
    # a finished build is read back from its state without generating anything
    again = source(tmp_path / "cut", lambda *a, **k: pytest.fail("generated again"), **options)
    assert [(r.id, r.messages[0].content) for r in again.records()] == full


def test_a_torn_last_line_is_cut_and_a_larger_target_continues(tmp_path: Path) -> None:
    first = [r.id for r in source(tmp_path, unique_lines, num_instructions=4, prompts_per_round=2).records()]
    state = tmp_path / "work" / "state.jsonl"
    with state.open("a") as handle:
        handle.write('{"type": "candidate", "round": 9')  # the process died while writing
    more = [r.id for r in source(tmp_path, unique_lines, num_instructions=9, prompts_per_round=2).records()]
    assert len(more) == 9 and more[:4] == first and len(set(more)) == 9
    assert all(line.endswith("}") for line in state.read_text().splitlines())


def test_other_settings_in_the_same_work_dir_are_refused(tmp_path: Path) -> None:
    list(source(tmp_path, unique_lines, num_instructions=2).records())
    with pytest.raises(ift.DataError, match="holds a build made with other settings"):
        list(source(tmp_path, unique_lines, num_instructions=2, rouge_threshold=0.5).records())


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny Llama with the byte-level tokenizer, saved like a downloaded model."""
    from ift.builtin_plugins.causal_lm import CausalLMAdapter, CausalLMConfig

    folder = tmp_path_factory.mktemp("tiny-model")
    adapter = CausalLMAdapter(CausalLMConfig(**MODEL), base_dir=folder)
    tokenizer = adapter.load_tokenizer()
    adapter.save(adapter.load_model(tokenizer), tokenizer, folder)
    return folder


def test_a_local_model_runs_the_whole_pipeline(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = config(
        tmp_path,
        model={"name_or_path": str(tiny_model_dir), "device": "cpu"},
        num_instructions=3,
        max_rounds=2,
        prompts_per_round=2,
        max_new_tokens=16,
        instance_max_new_tokens=8,
        min_words=1,
        min_quality=0.0,
        rouge_threshold=1.0,
    )
    src = SelfInstructSource(cfg, source_name="gen", base_dir=tmp_path)
    records = list(src.records())
    stats = src.stats
    assert stats["rounds"] >= 1 and stats["candidates"] == stats["kept"] + sum(stats["rejected"].values())
    assert len(records) == stats["kept"] <= 3
    assert len(decided_keys(tmp_path / "work")) == stats["candidates"]


def test_two_builds_in_one_work_dir_take_turns(tmp_path: Path) -> None:
    import threading
    import time

    calls = {"first": 0, "second": 0}

    def slow(name: str) -> Any:
        def generate(prompts: list[str], **kwargs: Any) -> list[str]:
            calls[name] += 1
            time.sleep(0.05)
            return unique_lines(prompts, **kwargs)

        return generate

    results: dict[str, list[str]] = {}

    def build(name: str) -> None:
        src = source(tmp_path, slow(name), num_instructions=6, prompts_per_round=2)
        results[name] = [r.id for r in src.records()]

    first = threading.Thread(target=build, args=("first",))
    first.start()
    time.sleep(0.02)
    build("second")  # waits for the first build's lock, then finds the state complete
    first.join()
    assert results["first"] == results["second"] and len(results["first"]) == 6
    assert calls["second"] == 0 and calls["first"] > 0
    keys = decided_keys(tmp_path / "work")
    assert len(keys) == len(set(keys))


def loops(prompts: list[str], *, max_new_tokens: int, stop: list[str]) -> list[str]:
    """The issue's case: a looping instruction, and a sound instruction whose answer is a loop."""
    if prompts and prompts[0].endswith("Input:"):
        return [
            " none\nOutput: " + ("t t t t" if "colour" in p.rsplit("Task: ", 1)[1] else "Paris is.") for p in prompts
        ]
    return ["t t t t\nName a colour of the rainbow.\nWhat is the capital of France?" for _ in prompts]


@pytest.mark.parametrize("max_repetition", [None, 1.0])
def test_loops_are_rejected_by_default_without_a_task_description(tmp_path: Path, max_repetition: float | None) -> None:
    options = {} if max_repetition is None else {"max_repetition": max_repetition}
    src = source(tmp_path, loops, prompts_per_round=1, num_instructions=5, max_rounds=1, **options)
    kept = {r.messages[0].content: r.answer for r in src.records()}
    if max_repetition is None:  # the default: both loops go, each as 'repetitive'
        assert kept == {"What is the capital of France?": "Paris is."}
        assert src.stats["rejected"] == {"repetitive": 2}
    else:  # the check off: the loops are what the quality score alone lets through (the 't t t t')
        assert kept["Name a colour of the rainbow."] == "t t t t"
        assert "repetitive" not in src.stats["rejected"]
