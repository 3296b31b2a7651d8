"""The prepared-data cache: exact round trip, never trusts a damaged or unfinished entry, and its key
changes with the template, the tokenizer and the data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ift
from ift.cache import Prepared, PreparedCache, tokenizer_fingerprint
from ift.cli import main


def sample() -> Prepared:
    examples = [
        ift.EncodedExample([5, 6, 7], [-100, 6, 7], "a", "r1"),
        ift.EncodedExample([9], [9], "b", "r2", truncated=True, task="t"),
    ]
    record = ift.InstructionRecord(
        "r2",
        "b",
        [ift.Message("user", "q"), ift.Message("assistant", "é")],
        task="t",
        label="x",
        choices=["x", "y"],
        metadata={"row": 3},
    )
    return Prepared(examples, examples[1:], [record], {"split": {"train": 2}})


def test_round_trip_is_exact(tmp_path: Path):
    cache = PreparedCache(tmp_path)
    cache.store("k", sample())
    loaded = cache.load("k")
    expected = sample()
    assert list(loaded.train) == expected.train and list(loaded.eval) == expected.eval
    assert (loaded.eval_records, loaded.report) == (expected.eval_records, expected.report)
    assert [e.task for e in loaded.train] == [None, "t"]


def test_labels_of_another_length_than_the_ids_round_trip(tmp_path: Path):
    """Encoder-decoder examples: encoder ids and decoder labels have lengths of their own."""
    examples = [ift.EncodedExample([1, 2, 3, 4, 5], [7, 8], "a", "r1"), ift.EncodedExample([6], [9, 10, 11], "a", "r2")]
    cache = PreparedCache(tmp_path)
    cache.store("k", Prepared(examples, [], [], {}))
    assert list(cache.load("k").train) == examples


def test_damaged_or_unfinished_entries_are_not_trusted(tmp_path: Path):
    cache = PreparedCache(tmp_path)
    entry = cache.store("k", sample())
    with (entry / "train" / "ids.bin").open("r+b") as handle:  # one token id changed
        handle.seek(-4, 2)
        handle.write(b"\1\0\0\0")
    assert cache.load("k") is None
    entry = cache.store("k", sample())
    with (entry / "train" / "labels.bin").open("ab") as handle:  # a column longer than the index says
        handle.write(b"\0\0\0\0")
    assert cache.load("k") is None
    entry = cache.store("k", sample())
    (entry / "meta.json").write_text((entry / "meta.json").read_text().replace('"r1"', '"r9"'))
    assert cache.load("k") is None
    # a preparation killed before its final rename leaves only a hidden temporary folder
    partial = tmp_path / ".k2.tmp-123"
    partial.mkdir()
    (partial / "meta.json").write_text("{}")
    assert cache.load("k2") is None
    entry2 = cache.store("k3", sample())
    (entry2 / "complete.json").unlink()  # killed between writing arrays and the completion record
    assert cache.load("k3") is None


def test_tokenizer_fingerprint_sees_vocabulary_and_chat_template(tokenizer):
    from ift.builtin_plugins.byte_tokenizer import build_byte_tokenizer

    other = build_byte_tokenizer()
    assert tokenizer_fingerprint(other) == tokenizer_fingerprint(tokenizer)
    other.chat_template = "{{ messages }}"
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tokenizer)
    other = build_byte_tokenizer()
    other.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tokenizer)


RECIPE = """
[[data]]
source = "jsonl"
path = "data.jsonl"

[template]
name = "{template}"

[model]
adapter = "causal-lm"
tokenizer = "byte-level"
from_config = {{ model_type = "llama", hidden_size = 16, intermediate_size = 32, num_hidden_layers = 1, num_attention_heads = 2 }}

[trainer]
max_steps = 1
batch_size = 4

[eval]
fraction = 0.2
metrics = ["loss"]
baseline = false
"""


@pytest.mark.slow
def test_second_run_reuses_prepared_data_and_a_new_template_does_not(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("IFT_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "data.jsonl").write_text(
        "".join(json.dumps({"prompt": f"p{i}", "completion": f"c{i}"}) + "\n" for i in range(10))
    )

    def run(name: str, template: str) -> dict:
        (tmp_path / "r.toml").write_text(RECIPE.format(template=template))
        assert main(["run", str(tmp_path / "r.toml"), "-o", str(tmp_path / name)]) == 0
        return json.loads((tmp_path / name / "manifest.json").read_text())

    first, second, third = run("a", "alpaca"), run("b", "alpaca"), run("c", "chatml")
    assert first["cache"]["hit"] is False and second["cache"]["hit"] is True
    assert second["cache"]["key"] == first["cache"]["key"]
    assert third["cache"]["hit"] is False and third["cache"]["key"] != first["cache"]["key"]
    assert second["data"] == first["data"]  # the manifest still reports the original counts
    # the data quality report is written for fresh data and restored with cached data
    assert (tmp_path / "a" / "data_report.json").read_text() == (tmp_path / "b" / "data_report.json").read_text()
    assert json.loads((tmp_path / "a" / "data_report.json").read_text())["records"] == 8
    metrics = [json.loads((tmp_path / n / "metrics.json").read_text())["final"]["overall"]["loss"] for n in "ab"]
    assert metrics[0] == pytest.approx(metrics[1], rel=1e-6)  # same data, same seed, same result
    (tmp_path / "data.jsonl").write_text((tmp_path / "data.jsonl").read_text() + '{"prompt": "x", "completion": "y"}\n')
    assert run("d", "alpaca")["cache"]["hit"] is False  # changed data, new key


class _Shout(ift.Transform):
    name = "shout"

    def apply(self, records, tally):
        return records


class _Whisper(ift.Transform):
    name = "whisper"

    def apply(self, records, tally):
        return records


class _Registers:
    def __init__(self, *classes: type) -> None:
        self.classes = list(classes)

    @ift.hookimpl
    def ift_register_transforms(self) -> list[type]:
        return self.classes


class _JinjaFilters:
    @ift.hookimpl
    def ift_prepare_jinja_env(self, env) -> None:
        env.filters["loud"] = str.upper


def test_the_key_changes_with_the_version_of_a_plugin_that_shaped_the_data(
    host, make_recipe, tokenizer, tmp_path: Path, monkeypatch
):
    from ift.pipeline import Run, make_renderer

    monkeypatch.delenv("IFT_NO_CACHE", raising=False)
    (tmp_path / "d.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')

    def key(**versions: str) -> str:
        for name in ("shouter", "idle", "filters"):
            if name in host.plugins:
                host.unregister(name)
        host.register(_Registers(_Shout), "shouter", distribution="ift-shout", version=versions.get("shout", "1.0"))
        host.register(_Registers(_Whisper), "idle", distribution="ift-whisper", version=versions.get("idle", "1.0"))
        if "filters" in versions:
            host.register(_JinjaFilters(), "filters", distribution="ift-filters", version=versions["filters"])
        recipe = make_recipe(transforms=[{"name": "shout"}])
        renderer = make_renderer(recipe, host)
        result = Run(recipe, host, tmp_path / "run").data.cache_key(None, tokenizer, renderer)
        assert result is not None
        return result

    first = key()
    assert key() == first
    assert key(shout="1.1") != first  # the transform that ran changed: the data is prepared again
    assert key(idle="9.0") == first  # a plugin whose components the recipe does not use
    with_filters = key(filters="1.0")
    assert with_filters != first and key(filters="2.0") != with_filters  # Jinja filters shape the rendered text


def test_the_key_follows_a_local_plugin_files_contents(host, make_recipe, tokenizer, tmp_path: Path, monkeypatch):
    from ift.pipeline import Run, make_renderer

    monkeypatch.delenv("IFT_NO_CACHE", raising=False)
    (tmp_path / "d.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
    plugin = tmp_path / "shouting.py"
    body = (
        "import ift\n\nclass Shout(ift.Transform):\n    name = 'shout'\n\n    def apply(self, records, tally):\n"
        "        return records{}\n\n@ift.hookimpl\ndef ift_register_transforms():\n    return [Shout]\n"
    )

    def key(suffix: str) -> str:
        if "local:shouting" in host.plugins:
            host.unregister("local:shouting")
        plugin.write_text(body.format(suffix))
        host.load_local(plugin)
        recipe = make_recipe(transforms=[{"name": "shout"}])
        result = Run(recipe, host, tmp_path / "run").data.cache_key(None, tokenizer, make_renderer(recipe, host))
        assert result is not None
        return result

    assert key("") == key("")
    assert key("") != key("[:1]")  # same name, same "version" (local), other code
