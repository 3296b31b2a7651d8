"""length-filter, mask-pii, tag and decontaminate: exact counts and contents; the transforms run through
the core's apply_transforms from a recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

import ift
from ift.builtin_plugins.cleaning import Decontaminate, KeywordTagger, LengthFilter, MaskPII, Tag, contamination
from ift.builtin_plugins.cleaning.decontam import DecontaminateConfig
from ift.builtin_plugins.cleaning.filters import LengthFilterConfig
from ift.builtin_plugins.cleaning.pii import MaskPIIConfig, luhn_ok
from ift.builtin_plugins.cleaning.tagging import TagConfig
from ift.data import DataReport, apply_transforms
from ift.host import PluginHost

DATA = Path(__file__).resolve().parents[1] / "data" / "cleaning"


def rec(rid: str, prompt: str, answer: str = "ok", split: str = "auto", **kw: object) -> ift.InstructionRecord:
    return ift.InstructionRecord(
        rid, "s", [ift.Message("user", prompt), ift.Message("assistant", answer)], metadata={"split": split}, **kw
    )  # type: ignore[arg-type]


def run(
    transform: ift.Transform, records: list[ift.InstructionRecord]
) -> tuple[list[ift.InstructionRecord], ift.Tally]:
    tally = ift.Tally()
    return transform.apply(records, tally), tally


def test_registered_names(host: PluginHost) -> None:
    assert {"near-dedup", "length-filter", "mask-pii", "tag", "decontaminate"} <= set(host.names("transform"))
    assert host.get("transform", "mask-pii").plugin == "cleaning"


# --- length-filter ---------------------------------------------------------------------------------


def test_length_filter_counts_each_bound_separately() -> None:
    records = [
        rec("ok", "one two three", "a b c d"),
        rec("short-prompt", "hi", "a b c d"),
        rec("long-prompt", "w " * 30, "a b c d"),
        rec("short-answer", "one two three", "a"),
        rec("long-answer", "one two three", "x " * 50),
        rec("both", "hi", "a"),
    ]
    config = LengthFilterConfig(min_prompt=2, max_prompt=20, min_answer=2, max_answer=40)
    kept, tally = run(LengthFilter(config), records)
    assert [r.id for r in kept] == ["ok"]
    assert dict(tally.dropped) == {
        "prompt too short": 2,
        "prompt too long": 1,
        "answer too short": 1,
        "answer too long": 1,
    }


def test_length_filter_in_characters_and_only_the_bounds_given() -> None:
    records = [rec("a", "abcdef", "x" * 10), rec("b", "abc", "y" * 11)]
    kept, tally = run(LengthFilter(LengthFilterConfig(unit="chars", max_answer=10)), records)
    assert [r.id for r in kept] == ["a"] and dict(tally.dropped) == {"answer too long": 1}
    with pytest.raises(ValidationError, match="min_prompt"):
        LengthFilterConfig(min_prompt=5, max_prompt=2)


# --- mask-pii --------------------------------------------------------------------------------------

PII_TEXT = (
    "Contact jane.doe@example.com or +1 (555) 123-4567, office 020 7946 0958, cell 555.987.6543. "
    "SSN 123-45-6789, card 4111 1111 1111 1111, account 12345678901. "
    "In 2023 we sold 42 units at 3.14 each, 1,000,000 in total, on 2024-01-15 at 10:30; "
    "order 1234-5678, years 1999 2000 2001 2002, card-like 4111 1111 1111 1112."
)
PII_MASKED = (
    "Contact [EMAIL] or [PHONE], office [PHONE], cell [PHONE]. "
    "SSN [SSN], card [CREDIT_CARD], account [ID_NUMBER]. "
    "In 2023 we sold 42 units at 3.14 each, 1,000,000 in total, on 2024-01-15 at 10:30; "
    "order 1234-5678, years 1999 2000 2001 2002, card-like 4111 1111 1111 1112."
)


def test_mask_pii_replaces_exactly_the_planted_values() -> None:
    records = [rec("a", PII_TEXT, "Write to bob@mail.co.uk"), rec("b", "What is 6 times 7?", "42")]
    kept, tally = run(MaskPII(MaskPIIConfig()), records)
    assert kept[0].messages[0].content == PII_MASKED
    assert kept[0].answer == "Write to [EMAIL]"
    assert kept[1] is records[1]  # untouched records are not copied
    assert records[0].messages[0].content == PII_TEXT  # the input records are not modified
    assert dict(tally.changed) == {
        "masked email": 2,
        "masked phone": 3,
        "masked ssn": 1,
        "masked credit_card": 1,
        "masked id_number": 1,
    }
    assert dict(tally.dropped) == {}


def test_mask_pii_extra_patterns_replacement_types_and_roles() -> None:
    config = MaskPIIConfig(
        types=["email"], patterns={"employee-id": r"EMP-\d{6}"}, replacement="<{type}>", roles=["user"]
    )
    records = [rec("a", "EMP-123456 mailed a@b.io about 123-45-6789", "EMP-654321")]
    kept, tally = run(MaskPII(config), records)
    assert kept[0].messages[0].content == "<employee-id> mailed <email> about 123-45-6789"
    assert kept[0].answer == "EMP-654321"
    assert dict(tally.changed) == {"masked employee-id": 1, "masked email": 1}


def test_mask_pii_config_errors() -> None:
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        MaskPIIConfig(patterns={"bad": "("})
    with pytest.raises(ValidationError, match="replacement"):
        MaskPIIConfig(replacement="[{kind}]")
    with pytest.raises(ValidationError):
        MaskPIIConfig(types=["passport"])


def test_luhn() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("378282246310005") and not luhn_ok("4111111111111112")


# --- tag -------------------------------------------------------------------------------------------


def test_tag_writes_task_and_domain_and_counts_them() -> None:
    records = [
        rec("sum", "Please summarize this article about bank loans.", "Loans got dearer."),
        rec("code", "Write a Python function that reverses a list.", "def f(x): return x[::-1]"),
        rec("qa", "Why do cells need energy?", "To live."),
        rec("kept", "Translate 'cat' into French", "chat", task="mine"),
        rec("none", "Hmm.", "Yes."),
    ]
    kept, tally = run(Tag(TagConfig()), records)
    assert [(r.task, r.metadata["domain"]) for r in kept] == [
        ("summarization", "finance"),
        ("code", "programming"),
        ("question-answering", "science"),
        ("mine", "language"),
        ("other", "general"),
    ]
    assert dict(tally.changed) == {
        "task: summarization": 1,
        "task: code": 1,
        "task: question-answering": 1,
        "task: other": 1,
        "domain: finance": 1,
        "domain: programming": 1,
        "domain: science": 1,
        "domain: language": 1,
        "domain: general": 1,
    }
    assert records[0].task is None and "domain" not in records[0].metadata  # inputs untouched
    assert kept[3].metadata == {"split": "auto", "domain": "language"}


def test_tag_custom_maps_first_word_keywords_overwrite_and_no_fallback() -> None:
    config = TagConfig(
        task_keywords={"lookup": ["^find"], "chat": ["hello"]},
        domain_keywords={"pets": ["dog"]},
        fallback_task=None,
        fallback_domain=None,
        overwrite=True,
    )
    records = [rec("a", "Find my dog, hello", task="old"), rec("b", "I cannot find it"), rec("c", "Hello there")]
    kept, tally = run(Tag(config), records)
    assert [(r.task, r.metadata.get("domain")) for r in kept] == [("lookup", "pets"), (None, None), ("chat", None)]
    assert dict(tally.changed) == {"task: lookup": 1, "task: chat": 1, "domain: pets": 1}


def test_keyword_tagger_domain_is_most_hits_then_map_order() -> None:
    tagger = KeywordTagger(domain_keywords={"a": ["x"], "b": ["y", "z"]})
    assert tagger.domain("y z x") == "b" and tagger.domain("x y") == "a" and tagger.domain("w") is None
    with pytest.raises(ValidationError):
        TagConfig(task_keywords={})


# --- decontaminate ---------------------------------------------------------------------------------

LONG_EVAL = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"


def test_decontaminate_drops_exactly_the_planted_overlaps_with_eval_split_records() -> None:
    records = [
        rec("eval", LONG_EVAL, split="eval"),
        rec("copy-13", f"Context: {' '.join(LONG_EVAL.split()[2:15])} okay"),  # shares one 13-gram
        rec("copy-12", " ".join(LONG_EVAL.split()[:12])),  # 12 words: no shared 13-gram
        rec("answer-only", "Something else entirely", LONG_EVAL),  # overlap in the answer: prompt not
        rec("short-eval", "Name the capital city", split="eval"),
        rec("short-copy", "name the CAPITAL city!"),  # a prompt shorter than n is compared whole
        rec("too-short", "the capital", split="eval"),  # under min_words: not compared whole
        rec("clean", "A different question about the capital"),
    ]
    kept, tally = run(Decontaminate(DecontaminateConfig()), records)
    assert [r.id for r in kept] == ["eval", "copy-12", "answer-only", "short-eval", "too-short", "clean"]
    assert dict(tally.dropped) == {"overlaps eval set": 2}
    # every turn, 8-grams: the 12-word copy and the answer now overlap; the short answers "ok" never count
    kept, tally = run(Decontaminate(DecontaminateConfig(fields="conversation", n=8)), records)
    assert [r.id for r in kept] == ["eval", "short-eval", "too-short", "clean"]


def test_decontaminate_threshold_is_a_share_of_the_records_ngrams() -> None:
    words = LONG_EVAL.split()  # 15 words: 3 13-grams
    half = rec("half", " ".join(words[:13] + [f"new{i}" for i in range(2)]))  # 1 of 3 13-grams shared
    records = [rec("eval", LONG_EVAL, split="eval"), half]
    assert contamination([half], [records[0]]) == [pytest.approx(1 / 3)]
    assert [r.id for r in run(Decontaminate(DecontaminateConfig(threshold=0.3)), records)[0]] == ["eval"]
    assert [r.id for r in run(Decontaminate(DecontaminateConfig(threshold=0.4)), records)[0]] == ["eval", "half"]


def test_decontaminate_against_an_external_eval_file(tmp_path: Path) -> None:
    text = (
        "Describe the process by which plants convert sunlight water and carbon dioxide into glucose and "
        "oxygen in their leaves."
    )
    records = [
        rec("copy", f"Question: {text}"),
        rec("capital", "Name the capital of Australia."),
        rec("other", "Name the capital of Austria."),
    ]
    config = DecontaminateConfig(eval_path=str(DATA / "eval.jsonl"), eval_split=False)
    kept, tally = run(Decontaminate(config), records)
    assert [r.id for r in kept] == ["other"] and dict(tally.dropped) == {"overlaps eval set": 2}
    relative = Decontaminate(DecontaminateConfig(eval_path="eval.jsonl"), base_dir=DATA)
    assert [r.id for r in run(relative, records)[0]] == ["other"]


def test_decontaminate_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ift.DataError, match="no eval set"):
        run(Decontaminate(DecontaminateConfig()), [rec("a", "x")])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n\n" + json.dumps({"instruction": "q"}) + "\n")
    with pytest.raises(ift.DataError, match=r"bad\.jsonl:3: bad eval row: missing field 'output'"):
        run(Decontaminate(DecontaminateConfig(eval_path=str(bad))), [rec("a", "x")])
    with pytest.raises(ift.DataError, match="eval file not found"):
        run(Decontaminate(DecontaminateConfig(eval_path=str(tmp_path / "none.jsonl"))), [rec("a", "x")])


# --- every builtin transform ----------------------------------------------------------------------


def test_every_builtin_transform_counts_its_drops_and_leaves_its_input_alone(host: PluginHost) -> None:
    records = [
        rec("eval", "Name the capital of Australia please", "Canberra", split="eval"),
        rec("copy", "Name the capital of Australia please", "Canberra"),
        rec("empty", "Say hi", ""),
        rec("pii", "Mail a@b.io or call 555-123-4567", "Done."),
        rec("near", "Name the capital of Australia please now", "Canberra"),
    ]
    before = [r.to_dict() for r in records]
    names = [n for n in host.names("transform") if host.get("transform", n).distribution == "ift"]
    assert len(names) == 7
    for name in names:
        cls = host.get("transform", name).cls
        kept, tally = run(cls(cls.Config()), list(records))
        assert len(records) - len(kept) == sum(tally.dropped.values()), name
        assert "eval" in [r.id for r in kept], name  # a valid eval record is never dropped
        assert [r.to_dict() for r in records] == before, name


# --- through the core ------------------------------------------------------------------------------


def test_a_recipe_chains_the_cleaning_transforms(make_recipe, host: PluginHost, tmp_path: Path) -> None:
    transforms = [
        {"name": "drop-invalid"},
        {"name": "dedup"},
        {"name": "near-dedup"},
        {"name": "length-filter", "max_answer": 5},
        {"name": "mask-pii"},
        {"name": "tag"},
        {"name": "decontaminate", "eval_path": str(DATA / "eval.jsonl"), "eval_split": False},
    ]
    recipe = make_recipe(transforms=transforms)
    records = [
        rec("a", "Name the capital of Australia."),
        rec("b", "Mail me at x@y.org"),
        rec("c", "Mail me at x@y.org"),
        rec("d", "Write a long answer", "w " * 6),
        rec("e", "Say nothing", " "),
        rec("f", "Tell me about the sea and the sky above it", "fine"),  # 3-gram Jaccard with g: 8/11
        rec("g", "Tell me about the sea and the sky above it now", "fine"),
    ]
    report = DataReport()
    kept = apply_transforms(recipe, host, records, report)
    assert [r.id for r in kept] == ["b", "f"]
    assert kept[0].messages[0].content == "Mail me at [EMAIL]"
    assert [(t["name"], t["in"], t["out"], t["dropped"]) for t in report.transforms] == [
        ("drop-invalid", 7, 6, {"empty output": 1}),
        ("dedup", 6, 5, {"duplicate": 1}),
        ("near-dedup", 5, 4, {"near-duplicate": 1}),
        ("length-filter", 4, 3, {"answer too long": 1}),
        ("mask-pii", 3, 3, {}),
        ("tag", 3, 3, {}),
        ("decontaminate", 3, 2, {"overlaps eval set": 1}),
    ]
    assert report.transforms[4]["changed"] == {"masked email": 1}
