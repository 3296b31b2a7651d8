"""GGUF in: a ``.gguf`` file (a path, ``package:NAME/file.gguf``, a package's one GGUF) becomes a cached
safetensors folder whose model gives exactly the logits of transformers' own GGUF load, with the file's tokenizer
and chat template; the second resolve reuses the entry; bad files fail in one line and leave no entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ift
from ift.builtin_plugins.gguf import convert as convert_module
from ift.builtin_plugins.model_paths import resolve_model_path

from .helpers import CHAT_TEMPLATE, logits, write_tiny_gguf

PROMPT = "hello world, the quick brown fox 123"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("IFT_CACHE_DIR", str(root))
    return root / "gguf"


def entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


@pytest.mark.parametrize(("quant", "tied"), [("f32", False), ("f16", True), ("q8_0", False)])
def test_converted_folder_equals_transformers_gguf_load(tmp_path: Path, cache: Path, quant: str, tied: bool) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    write_tiny_gguf(tmp_path / "tiny.gguf", quant=quant, tied=tied)
    folder = Path(resolve_model_path("tiny.gguf", tmp_path))  # relative to the recipe's folder
    assert folder.parent == cache and len(folder.name) == 64
    reference = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf").eval()
    ref_tokenizer = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="tiny.gguf")
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ids = tokenizer(PROMPT)["input_ids"]
    assert ids == ref_tokenizer(PROMPT)["input_ids"] and len(ids) < len(PROMPT)  # real merges were applied
    assert float((logits(model, ids) - logits(reference, ids)).abs().max()) == 0.0
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert model.config.tie_word_embeddings is tied
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # a plain folder, not a GGUF-quantized one
    source = json.loads((folder / "gguf_source.json").read_text())
    assert source["file"] == "tiny.gguf" and source["architecture"] == "llama"
    assert source["quantization"] == quant.upper() and source["size"] == (tmp_path / "tiny.gguf").stat().st_size


def test_second_resolve_reuses_the_entry_and_a_changed_file_converts_again(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    first = convert_module.resolve_gguf(path)
    assert first.converted_now

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(convert_module, "_convert_into", refuse)
    convert_module._verified.clear()  # as a new process would: checksums are verified again
    again = convert_module.resolve_gguf(path)
    assert not again.converted_now and again.folder == first.folder
    # a damaged entry is not trusted
    monkeypatch.undo()
    (first.folder / "config.json").write_text("{}")
    convert_module._verified.clear()
    repaired = convert_module.resolve_gguf(path)
    assert repaired.converted_now and json.loads((repaired.folder / "config.json").read_text())["model_type"] == "llama"
    # the same path with other content: hashed again (the memo is keyed by size, mtime and inode), a new entry
    write_tiny_gguf(path, quant="f16")
    changed = convert_module.resolve_gguf(path)
    assert changed.converted_now and changed.folder != first.folder


def test_package_references(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    one = site / "ift_test_gguf_one"
    one.mkdir(parents=True)
    (one / "__init__.py").write_text("raise RuntimeError('imported')\n")
    write_tiny_gguf(one / "model.Q8_0.gguf", quant="q8_0")
    two = site / "ift_test_gguf_two"
    two.mkdir()
    (two / "__init__.py").write_text("")
    write_tiny_gguf(two / "a.gguf")
    write_tiny_gguf(two / "b.gguf", quant="f16")
    empty = site / "ift_test_gguf_none"
    empty.mkdir()
    (empty / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(site))
    folder = Path(resolve_model_path("package:ift_test_gguf_one", Path("/elsewhere")))
    assert json.loads((folder / "gguf_source.json").read_text())["label"] == "package:ift_test_gguf_one"
    assert resolve_model_path("package:ift_test_gguf_one/model.Q8_0.gguf", Path(".")) == str(folder)
    with pytest.raises(
        ift.RunError,
        match=r"several GGUF files; name one: 'package:ift_test_gguf_two/a.gguf', "
        r"'package:ift_test_gguf_two/b.gguf'",
    ):
        resolve_model_path("package:ift_test_gguf_two", Path("."))
    with pytest.raises(ift.RunError, match="ships no model folder .* and no GGUF file"):
        resolve_model_path("package:ift_test_gguf_none", Path("."))
    with pytest.raises(ift.RunError, match=r"missing.gguf does not exist .*its GGUF files: model.Q8_0.gguf"):
        resolve_model_path("package:ift_test_gguf_one/missing.gguf", Path("."))


def _bad_architecture(path: Path) -> None:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "notallama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _bad_tensor_type(path: Path) -> None:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.int8))  # I8: no dequantization exists
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _truncated(path: Path) -> None:
    write_tiny_gguf(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text("this is not a model\n"), r"bad.gguf: not a GGUF file \(it starts with b'this'"),
        (_truncated, r"bad.gguf: the GGUF file cannot be read .*truncated or damaged"),
        (_bad_architecture, r"bad.gguf: a GGUF file of architecture 'notallama' .*transformers cannot load"),
        (
            _bad_tensor_type,
            r"bad.gguf: tensor token_embd.weight is stored as I8, which the gguf package cannot "
            r"dequantize",
        ),
    ],
)
def test_bad_files_fail_in_one_line_and_leave_no_cache_entry(
    tmp_path: Path, cache: Path, make: object, message: str
) -> None:
    path = tmp_path / "bad.gguf"
    make(path)  # type: ignore[operator]
    with pytest.raises(ift.RunError, match=message) as caught:
        resolve_model_path("bad.gguf", tmp_path)
    assert caught.value.exit_code == ift.errors.EXIT_RUN == 5
    assert "\n" not in str(caught.value)
    assert entries(cache) == []


def test_missing_gguf_path_is_named(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(ift.RunError, match=r"model.name_or_path = 'nope.gguf': no such GGUF file"):
        resolve_model_path("nope.gguf", tmp_path)
