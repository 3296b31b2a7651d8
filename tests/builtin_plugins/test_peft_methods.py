"""``[model.peft]``: every method trains through the causal-lm adapter and the sft trainer, saves a folder that
plain peft loads with identical logits; AdaLoRA really prunes ranks on the run's schedule; recipe errors name
the key; virtual-token methods refuse packed batches; sequence classification keeps its head."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import ift
from ift.builtin_plugins import peft_methods
from ift.builtin_plugins.causal_lm import CausalLMAdapter
from ift.builtin_plugins.sft import SFTConfig, SFTTrainer, resolve_batching
from ift.recipe import validate_recipe

TINY = {
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}


class Silent:
    total = 0

    def step(self, *args: Any) -> None:
        pass

    def write(self, message: str) -> None:
        pass


def make_adapter(tmp_path: Path, peft: dict[str, Any] | None, model: dict[str, Any] = TINY) -> CausalLMAdapter:
    config = CausalLMAdapter.Config(tokenizer="byte-level", from_config=model, device="cpu", dtype="float32", peft=peft)
    return CausalLMAdapter(config, base_dir=tmp_path)


def examples(adapter: CausalLMAdapter, tokenizer: Any, n: int = 8) -> list[ift.EncodedExample]:
    return [
        adapter.encode(
            tokenizer,
            [ift.Segment(f"question {i}?\n", False), ift.Segment(f"answer {i % 3}<|endoftext|>", True)],
            source="s",
            record_id=f"row-{i}",
        )
        for i in range(n)
    ]


def train(adapter: CausalLMAdapter, steps: int = 4, lr: float = 5e-2) -> tuple[Any, Any, list[ift.EncodedExample]]:
    tokenizer = adapter.load_tokenizer()
    torch.manual_seed(0)
    model = adapter.load_model(tokenizer)
    data = examples(adapter, tokenizer)
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
            batch_size=2,
            max_steps=steps,
            learning_rate=lr,
            warmup_ratio=0.0,
            batching="padding",
            scheduler="constant",
            log_every=steps,
        )
    )
    return trainer.train(ctx).model, tokenizer, data


def plain_peft(folder: Path) -> Any:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(folder / "base_model")
    return PeftModel.from_pretrained(base, folder).eval()


def logits(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return out[:, out.size(1) - batch["input_ids"].size(1) :]  # prompt tuning prepends virtual positions


METHODS = {
    "lora": {"method": "lora", "r": 4, "alpha": 8},
    "dora-rslora": {
        "method": "lora",
        "r": 4,
        "alpha": 8,
        "use_dora": True,
        "use_rslora": True,
        "target_modules": ["q_proj", "v_proj", "down_proj"],
    },
    "adalora": {"method": "adalora", "init_r": 4, "target_r": 2, "tinit": 1, "tfinal": 1},
    "ia3": {"method": "ia3"},
    "prefix-tuning": {"method": "prefix-tuning", "num_virtual_tokens": 3},
    "prompt-tuning": {"method": "prompt-tuning", "num_virtual_tokens": 4, "init_text": "Answer:"},
}


@pytest.mark.parametrize("name", list(METHODS))
def test_method_trains_saves_and_plain_peft_reloads_identical_logits(name: str, tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path, METHODS[name])
    tokenizer = adapter.load_tokenizer()
    torch.manual_seed(0)
    before = {n: p.detach().clone() for n, p in adapter.load_model(tokenizer).named_parameters() if p.requires_grad}
    model, tokenizer, data = train(adapter)
    trained = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert trained.keys() == before.keys() and trained
    assert any(not torch.equal(trained[n], before[n]) for n in trained), "no adapter weight changed"
    assert all(not p.requires_grad for n, p in model.named_parameters() if n not in trained)

    adapter.save(model, tokenizer, tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == "base_model"
    batch = adapter.collate(tokenizer, data[:3])
    reloaded = plain_peft(tmp_path / "model")
    assert torch.allclose(logits(model, batch), logits(reloaded, batch), atol=1e-5, rtol=0)
    # the adapter's own loss sees logits aligned with its labels for every method
    loss, count = adapter.loss_sum(model, batch)
    assert int(count) == int(batch["loss_tokens"]) and torch.isfinite(loss)
    prompts = ["question 1?\n", "q?\n"]  # left-padded together: the virtual tokens must not disturb that
    answers = adapter.generate(model, tokenizer, prompts, max_new_tokens=3, batch_size=2)
    assert answers == adapter.generate(reloaded, tokenizer, prompts, max_new_tokens=3, batch_size=2)
    assert all(isinstance(a, str) for a in answers)


def test_lora_switches_reach_peft(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path, METHODS["dora-rslora"])
    model = adapter.load_model(adapter.load_tokenizer())
    config = model.peft_config["default"]
    assert config.use_dora and config.use_rslora and config.target_modules == {"q_proj", "v_proj", "down_proj"}
    assert any("lora_magnitude_vector" in n for n, _ in model.named_parameters())
    summary = adapter.describe()["summary"]
    assert "DoRA r=4, alpha=8 (alpha/sqrt(r) = 4, rsLoRA)" in summary and "q_proj, v_proj, down_proj" in summary


def test_prompt_tuning_starts_from_the_init_text_embeddings(tmp_path: Path, byte_ids) -> None:
    adapter = make_adapter(tmp_path, {"method": "prompt-tuning", "num_virtual_tokens": 5, "init_text": "ab"})
    tokenizer = adapter.load_tokenizer()
    model = adapter.load_model(tokenizer)
    prompts = model.prompt_encoder["default"].embedding.weight
    words = model.get_input_embeddings().weight
    expected = words[torch.tensor(byte_ids("ababa"))]
    assert torch.equal(prompts, expected)


# --- AdaLoRA -------------------------------------------------------------------------------------


def test_adalora_allocates_ranks_on_the_runs_schedule(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path, {"method": "adalora", "init_r": 4, "target_r": 2, "tinit": 1, "tfinal": 0.2})
    calls: list[tuple[int, int, Any]] = []
    original = peft_methods.on_optimizer_step

    def spy(model: Any, section: Any, step: int, total: int) -> None:
        original(model, section, step, total)
        config = model.peft_config["default"]
        kept = None if config.rank_pattern is None else sum(sum(v) for v in config.rank_pattern.values())
        calls.append((step, total, kept))

    peft_methods.on_optimizer_step = spy  # the adapter looks it up at call time
    try:
        model, tokenizer, data = train(adapter, steps=5)
    finally:
        peft_methods.on_optimizer_step = original
    config = model.peft_config["default"]
    modules = sum(1 for n, _ in model.named_parameters() if n.endswith("lora_E.default"))
    assert modules == 7  # all-linear in one llama layer
    # tinit = 1 step, tfinal = 20% of 5 = 1 step: no pruning at step 1, the budget shrinks at steps 2-4 and
    # reaches target_r per module on average at step 4 = total - tfinal; step 5 keeps that pattern.
    assert (config.total_step, config.tinit, config.tfinal) == (5, 1, 1)
    assert [c[0] for c in calls] == [1, 2, 3, 4, 5] and {c[1] for c in calls} == {5}
    assert calls[0][2] is None
    kept = [c[2] for c in calls[1:]]
    assert kept[0] < 4 * modules and kept == sorted(kept, reverse=True) and kept[-2] == kept[-1] == 2 * modules
    pruned = sum(int((p == 0).sum()) for n, p in model.named_parameters() if "lora_E" in n)
    assert pruned == (4 - 2) * modules

    adapter.save(model, tokenizer, tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "adapter_config.json").read_text())
    assert (saved["total_step"], saved["tinit"], saved["tfinal"]) == (5, 1, 1)
    assert sum(sum(v) for v in saved["rank_pattern"].values()) == 2 * modules
    reloaded = plain_peft(tmp_path / "model")
    ranks = [p.shape[0] for n, p in reloaded.named_parameters() if "lora_E" in n]
    assert sum(ranks) == 2 * modules  # plain peft loads the pruned ranks only
    batch = adapter.collate(tokenizer, data[:3])
    assert torch.allclose(logits(model, batch), logits(reloaded, batch), atol=1e-5, rtol=0)


def test_adalora_schedule_longer_than_the_run_is_a_recipe_error(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path, {"method": "adalora", "init_r": 4, "target_r": 2, "tinit": 2, "tfinal": 2})
    with pytest.raises(ift.RecipeError) as err:
        train(adapter, steps=4)
    assert "model.peft.tinit" in str(err.value) and "run of 4 optimizer steps" in str(err.value)


def test_adalora_orthogonality_penalty_is_added_in_training_only(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path, {"method": "adalora", "init_r": 4, "target_r": 2, "orth_reg_weight": 0.3})
    tokenizer = adapter.load_tokenizer()
    model = adapter.load_model(tokenizer)
    batch = adapter.collate(tokenizer, examples(adapter, tokenizer, 2))
    model.eval()
    plain, count = adapter.loss_sum(model, batch)
    assert peft_methods.training_penalty(model) is None
    model.train()
    for module in model.modules():  # no dropout, so the two passes differ by the penalty only
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    penalty = peft_methods.training_penalty(model)
    lora = [(n, p) for n, p in model.base_model.model.named_parameters() if "lora_A" in n or "lora_B" in n]
    expected = (
        sum(
            torch.linalg.matrix_norm(
                (p @ p.T if "lora_A" in n else p.T @ p) - torch.eye((p @ p.T if "lora_A" in n else p.T @ p).size(0))
            )
            for n, p in lora
        )
        / len(lora)
        * 0.3
    )
    assert torch.allclose(penalty, expected) and float(penalty) > 0
    # the adapter hands the penalty to the training loop, which adds it for every objective (tests/core/test_engine.py)
    assert torch.allclose(adapter.training_penalty(model), penalty)
    in_training, _ = adapter.loss_sum(model, batch)
    assert torch.allclose(in_training, plain, rtol=1e-5)  # the data loss alone
    sums, counts = adapter.loss_by_example(model, batch)
    assert torch.allclose(sums.sum(), plain, rtol=1e-5) and int(counts.sum()) == int(count)


# --- recipe errors -------------------------------------------------------------------------------


def recipe_problems(host: Any, tmp_path: Path, peft: Any) -> str:
    model = {"adapter": "causal-lm", "tokenizer": "byte-level", "device": "cpu", "from_config": TINY, "peft": peft}
    with pytest.raises(ift.RecipeError) as err:
        validate_recipe({"data": [{"source": "jsonl", "path": "d.jsonl"}], "model": model}, host, base_dir=tmp_path)
    return str(err.value)


@pytest.mark.parametrize(
    ("peft", "expected"),
    [
        (
            {"method": "prompt-tuning", "r": 8},
            "model.peft.r: unknown key for method 'prompt-tuning' (r is a key of "
            "lora); its keys: method, num_virtual_tokens, init_text",
        ),
        ({"rr": 8}, "model.peft.rr: unknown key (did you mean 'r'?)"),
        (
            {"method": "adalora", "use_dora": True},
            "model.peft.use_dora: unknown key for method 'adalora' (use_dora is a key of lora); its keys: method, init_r",
        ),
        (
            {"method": "ia3", "colour": 1},
            "model.peft.colour: unknown key for method 'ia3'; its keys: method, "
            "target_modules, feedforward_modules, modules_to_save",
        ),
        (
            {"method": "loar"},
            "model.peft.method: 'loar' is not a PEFT method (did you mean 'lora'?); available: lora, "
            "adalora, ia3, prefix-tuning, prompt-tuning",
        ),
        ({"r": 0}, "model.peft.r: Input should be greater than 0"),
        ({"method": "adalora", "init_r": 8, "target_r": 8}, "model.peft.target_r: target_r (8) must be below init_r"),
        ({"method": "adalora", "tinit": 0.5, "tfinal": 0.5}, "model.peft.tfinal: tinit + tfinal = 1 of the run"),
        ({"method": "adalora", "tinit": 1.5}, "model.peft.tinit: 1.5: use a fraction of the run below 1"),
        (
            {"method": "ia3", "target_modules": ["k_proj"], "feedforward_modules": ["down_proj"]},
            "model.peft.feedforward_modules: ['down_proj'] are not in target_modules ['k_proj']",
        ),
        (
            {"method": "prefix-tuning", "projection_hidden_size": 64},
            "model.peft.projection_hidden_size: is set but projection = false",
        ),
        ("lora", "model.peft: must be a table"),
    ],
)
def test_recipe_errors_name_the_key(host, tmp_path: Path, peft: Any, expected: str) -> None:
    assert expected in recipe_problems(host, tmp_path, peft)


def test_method_defaults_to_lora_and_resolves_with_every_key(host, tmp_path: Path) -> None:
    model = {"adapter": "causal-lm", "tokenizer": "byte-level", "from_config": TINY, "peft": {"r": 4}}
    recipe = validate_recipe(
        {"data": [{"source": "jsonl", "path": "d.jsonl"}], "model": model}, host, base_dir=tmp_path
    )
    assert recipe.resolved()["model"]["peft"] == {
        "method": "lora",
        "r": 4,
        "alpha": 32.0,
        "dropout": 0.05,
        "target_modules": "all-linear",
        "use_dora": False,
        "use_rslora": False,
        "modules_to_save": None,
    }


@pytest.mark.parametrize(
    ("peft", "key", "missing"),
    [
        ({"method": "lora", "target_modules": ["q_proj", "query"]}, "model.peft.target_modules", "'query' not found"),
        ({"method": "lora", "target_modules": "layers\\.9\\..*"}, "model.peft.target_modules", "matches no module"),
        (
            {"method": "ia3", "target_modules": ["k_proj", "mlp_out"], "feedforward_modules": ["mlp_out"]},
            "model.peft.target_modules",
            "'mlp_out' not found",
        ),
        (
            {"method": "adalora", "init_r": 4, "target_r": 2, "modules_to_save": ["lm_heads"]},
            "model.peft.modules_to_save",
            "'lm_heads' not found",
        ),
    ],
)
def test_modules_that_do_not_exist_are_named_with_the_models_modules(
    tmp_path: Path, peft: dict[str, Any], key: str, missing: str
) -> None:
    adapter = make_adapter(tmp_path, peft)
    with pytest.raises(ift.RecipeError) as err:
        adapter.load_model(adapter.load_tokenizer())
    message = str(err.value)
    assert f"{key}: {missing}" in message or (key in message and missing in message)
    assert (
        "linear layers in this model: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj" in message
    )
    assert "embed_tokens" in message


def test_ia3_without_defaults_for_the_architecture_asks_for_targets(tmp_path: Path) -> None:
    olmo = {**TINY, "model_type": "olmo"}
    adapter = make_adapter(tmp_path, {"method": "ia3"}, model=olmo)
    with pytest.raises(ift.RecipeError) as err:
        adapter.load_model(adapter.load_tokenizer())
    assert "model.peft.target_modules: IA3 has no default modules for model type 'olmo'" in str(err.value)


# --- batching and the manifest ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ["prefix-tuning", "prompt-tuning"])
def test_virtual_token_methods_refuse_packed_batches(tmp_path: Path, method: str) -> None:
    adapter = make_adapter(tmp_path, {"method": method})
    assert adapter.supports_packing is False
    cuda = SimpleNamespace(type="cuda")
    for requested in ("packing", "padding-free"):
        with pytest.raises(ift.RecipeError) as err:
            resolve_batching(requested, adapter, cuda)
        assert f"trainer.batching: {requested!r} needs an adapter that supports packed batches" in str(err.value)
    assert resolve_batching("auto", adapter, cuda) == "length-grouped"


def test_methods_that_change_layers_keep_packing(tmp_path: Path) -> None:
    for peft in (None, {"method": "lora"}, {"method": "adalora"}, {"method": "ia3"}):
        adapter = make_adapter(tmp_path, peft)
        assert adapter.supports_packing is True
        assert resolve_batching("auto", adapter, SimpleNamespace(type="cuda")) == "padding-free"


@pytest.mark.parametrize(
    ("peft", "text"),
    [
        (None, "full fine-tuning"),
        ({"method": "lora", "r": 8, "alpha": 16}, "LoRA r=8, alpha=16 (alpha/r = 2), dropout=0.05, on all-linear"),
        (
            {"method": "adalora"},
            "AdaLoRA init_r=12 -> target_r=8, alpha=32, tinit=10%, tfinal=20%, delta_t=1, "
            "orth_reg_weight=0.5, on all-linear",
        ),
        ({"method": "ia3"}, "IA3 on the architecture's default modules"),
        (
            {"method": "prefix-tuning", "num_virtual_tokens": 10, "projection": True},
            "prefix tuning, 10 virtual tokens per layer, MLP projection (hidden size)",
        ),
        (
            {"method": "prompt-tuning", "init_text": "Classify:"},
            "prompt tuning, 20 virtual tokens (initialised from 'Classify:')",
        ),
    ],
)
def test_manifest_summary_names_the_method_and_its_settings(tmp_path: Path, peft: Any, text: str) -> None:
    described = make_adapter(tmp_path, peft).describe()
    assert described["summary"].endswith(text)
    assert described["peft"] == (peft or {}).get("method")


# --- sequence classification ---------------------------------------------------------------------


def classifier(num_labels: int = 3) -> Any:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(
        "llama",
        vocab_size=260,
        pad_token_id=256,
        num_labels=num_labels,
        **{k: v for k, v in TINY.items() if k != "model_type"},
    )
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config)


@pytest.mark.parametrize(
    "peft", [{"method": "lora", "r": 4}, {"method": "ia3"}, {"method": "prompt-tuning", "num_virtual_tokens": 3}]
)
def test_sequence_classification_trains_and_saves_its_head(tmp_path: Path, peft: dict[str, Any]) -> None:
    from peft import PeftModel

    section = CausalLMAdapter.Config(tokenizer="byte-level", from_config=TINY, peft=peft).peft
    model = peft_methods.apply_peft(classifier(), section, task_type="SEQ_CLS")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(".score.modules_to_save." in n for n in trainable)
    assert not any("score" in n and ("lora_" in n or "ia3_" in n) for n in trainable)  # head not adapted twice
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 256]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, torch.tensor([0, 2]))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(tmp_path / "adapter")
    model.eval()
    reloaded = PeftModel.from_pretrained(classifier(), tmp_path / "adapter").eval()
    with torch.no_grad():
        ours, theirs = (
            model(input_ids=ids, attention_mask=mask).logits,
            reloaded(input_ids=ids, attention_mask=mask).logits,
        )
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0)
    assert not torch.allclose(theirs, classifier().eval()(input_ids=ids, attention_mask=mask).logits)


def test_prefix_tuning_on_a_model_without_a_cache_is_refused(tmp_path: Path) -> None:
    section = CausalLMAdapter.Config(tokenizer="byte-level", from_config=TINY, peft={"method": "prefix-tuning"}).peft
    with pytest.raises(ift.RecipeError) as err:
        peft_methods.apply_peft(classifier(), section, task_type="SEQ_CLS")
    assert "model.peft.method: prefix-tuning needs a model that takes a key/value cache" in str(err.value)
    assert "LlamaForSequenceClassification does not" in str(err.value)


def test_wrapping_in_peft_shows_no_deprecation_warning_a_user_cannot_act_on(tmp_path: Path) -> None:
    import warnings

    adapter = make_adapter(tmp_path, METHODS["dora-rslora"])
    tokenizer = adapter.load_tokenizer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapter.load_model(tokenizer)
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
