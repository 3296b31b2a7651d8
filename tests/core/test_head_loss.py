"""The chunked loss at trained positions (ift.head_loss) against the full-logits computation: loss and
gradients to float tolerance for the causal-LM adapter (padded, padding-free and packed batches, per example,
accumulated micro-batches, LoRA, prompt tuning), the seq2seq adapter and a model whose logits are changed after
the head (the fallback); and no call of the head on more rows than one chunk."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import ift
from ift import head_loss
from ift.builtin_plugins.causal_lm import CausalLMAdapter
from ift.builtin_plugins.seq2seq import Seq2SeqAdapter, Seq2SeqConfig

TINY = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}
WORDS = ["abc", "doggo", "cat", "xyzzy", "sun", "mapping", "r", "toyboxes"]


def build(tmp_path: Any, **options: Any) -> tuple[CausalLMAdapter, Any, Any]:
    config = {"tokenizer": "byte-level", "from_config": TINY, "device": "cpu", "dtype": "float32", **options}
    adapter = CausalLMAdapter(CausalLMAdapter.Config(**config), base_dir=tmp_path)
    tokenizer = adapter.load_tokenizer()
    torch.manual_seed(0)
    model = adapter.load_model(tokenizer)
    model.eval()  # no dropout: both computations see the same forward pass
    return adapter, tokenizer, model


def examples(adapter: Any, tokenizer: Any, words: list[str] = WORDS) -> list[ift.EncodedExample]:
    return [
        adapter.encode(
            tokenizer,
            [ift.Segment(f"Spell {w} loudly:\n", False), ift.Segment(f"{w.upper()}!<|endoftext|>", True)],
            source=f"s{i % 2}",
            record_id=f"r{i}",
        )
        for i, w in enumerate(words)
    ]


def batch_of(adapter: Any, tokenizer: Any, mode: str, words: list[str] = WORDS) -> dict[str, Any]:
    found = examples(adapter, tokenizer, words)
    if mode == "padding":
        return adapter.collate(tokenizer, found)
    if mode == "padding-free":
        return adapter.collate_packed(tokenizer, [[e] for e in found])
    return adapter.collate_packed(tokenizer, [found[:3], found[3:5], found[5:]])  # packing


def full_logits_losses(model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """Per-example summed loss and counts the way they were computed before: whole logits, then cross-entropy."""
    inputs = CausalLMAdapter.model_inputs(batch)
    logits = model(**inputs).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    per_token = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="none"
    ).view_as(labels)
    owner = CausalLMAdapter.loss_owners(batch)
    counted = labels != -100
    n = len(batch["record_ids"])
    sums = per_token.new_zeros(n).index_add(0, owner, per_token[counted])
    return sums, torch.zeros(n, dtype=torch.long).index_add(0, owner, torch.ones_like(owner))


def grads(model: Any, loss: Any) -> dict[str, Any]:
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-6), name


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 3 rows (260-token vocabulary), so every batch spans several chunks."""
    monkeypatch.setattr(head_loss, "CHUNK_ELEMENTS", 3 * 260)


@pytest.mark.parametrize("mode", ["padding", "padding-free", "packing"])
def test_causal_lm_loss_and_gradients_match_the_full_logits(tmp_path, small_chunks, mode):
    adapter, tokenizer, model = build(tmp_path)
    batch = batch_of(adapter, tokenizer, mode)
    ref_sums, ref_counts = full_logits_losses(model, batch)
    ref_grads = grads(model, ref_sums.sum())

    total, count = adapter.loss_sum(model, batch)
    assert int(count) == int(batch["loss_tokens"]) == int(ref_counts.sum())
    assert total.item() == pytest.approx(ref_sums.sum().item(), rel=1e-6)
    assert_same_grads(grads(model, total), ref_grads)
    assert head_loss.uses_chunks(model) is True

    sums, counts = adapter.loss_by_example(model, batch)
    assert torch.equal(counts, ref_counts) and torch.allclose(sums, ref_sums.detach(), rtol=1e-6)
    assert_same_grads(grads(model, sums.sum()), ref_grads)


def test_the_head_never_sees_more_rows_than_a_chunk(tmp_path, small_chunks):
    adapter, tokenizer, model = build(tmp_path)
    batch = batch_of(adapter, tokenizer, "padding")
    adapter.loss_sum(model, batch)  # the first call checks the head on a few positions
    shapes: list[tuple[int, ...]] = []
    handle = model.lm_head.register_forward_hook(lambda m, args, out: shapes.append(tuple(out.shape)))
    try:
        total, _ = adapter.loss_sum(model, batch)
        total.backward()
    finally:
        handle.remove()
    trained = int(batch["loss_tokens"])
    rows = [s[0] for s in shapes if len(s) == 2]
    assert shapes[0] == (len(WORDS), 0, 260)  # inside the forward pass: logits for no position
    assert max(rows) == 3 and sum(rows) == 2 * trained  # every trained row once forward, once recomputed


def test_trained_positions_respect_the_shift_and_example_boundaries(tmp_path):
    adapter, tokenizer, model = build(tmp_path)
    batch = batch_of(adapter, tokenizer, "packing")
    counted = batch["labels"][:, 1:] != -100
    owners = CausalLMAdapter.loss_owners(batch)
    starts = batch["position_ids"] == 0
    assert not (counted & starts[:, 1:]).any()  # no position predicts the first token of the next example
    per_example = torch.bincount(owners, minlength=len(WORDS))
    expected = [sum(1 for t in e.labels[1:] if t != -100) for e in examples(adapter, tokenizer)]
    assert per_example.tolist() == expected
    assert CausalLMAdapter.loss_owners({k: v for k, v in batch.items() if k != "example_index"}) is None


def test_accumulated_micro_batches_give_the_gradient_of_the_whole_batch(tmp_path, small_chunks):
    adapter, tokenizer, model = build(tmp_path)
    whole = batch_of(adapter, tokenizer, "padding")
    ref_sums, _ = full_logits_losses(model, whole)
    ref = grads(model, ref_sums.sum() / int(whole["loss_tokens"]))
    model.zero_grad()
    n = int(whole["loss_tokens"])
    for half in (WORDS[:3], WORDS[3:]):
        total, _ = adapter.loss_sum(model, batch_of(adapter, tokenizer, "padding", half))
        (total / n).backward()
    assert_same_grads({k: p.grad for k, p in model.named_parameters() if p.grad is not None}, ref)


def test_lora_finds_the_head_through_peft(tmp_path, small_chunks):
    adapter, tokenizer, model = build(
        tmp_path, peft={"method": "lora", "r": 4, "target_modules": ["q_proj", "lm_head"]}
    )
    model.eval()
    with torch.no_grad():  # LoRA's B starts at zero: make the adapters matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    batch = batch_of(adapter, tokenizer, "padding")
    ref_sums, _ = full_logits_losses(model, batch)
    ref = grads(model, ref_sums.sum())
    total, _ = adapter.loss_sum(model, batch)
    assert head_loss.uses_chunks(model) is True
    assert total.item() == pytest.approx(ref_sums.sum().item(), rel=1e-6)
    got = grads(model, total)
    assert any("lm_head" in k and "lora" in k for k in got)
    assert_same_grads(got, ref)


def test_prompt_tuning_drops_the_virtual_positions(tmp_path, small_chunks):
    adapter, tokenizer, model = build(tmp_path, peft={"method": "prompt-tuning", "num_virtual_tokens": 4})
    model.eval()
    batch = batch_of(adapter, tokenizer, "padding")
    ref_sums, _ = full_logits_losses(model, batch)
    ref = grads(model, ref_sums.sum())
    total, _ = adapter.loss_sum(model, batch)
    assert head_loss.uses_chunks(model) is True
    assert total.item() == pytest.approx(ref_sums.sum().item(), rel=1e-6)
    assert_same_grads(grads(model, total), ref)


def test_logits_changed_after_the_head_fall_back_to_the_full_logits(tmp_path, small_chunks):
    adapter, tokenizer, model = build(tmp_path)
    model.register_forward_hook(lambda m, args, out: out.__setitem__("logits", 30 * torch.tanh(out.logits / 30)))
    batch = batch_of(adapter, tokenizer, "padding")
    ref_sums, _ = full_logits_losses(model, batch)
    ref = grads(model, ref_sums.sum())
    total, _ = adapter.loss_sum(model, batch)
    assert head_loss.uses_chunks(model) is False
    assert total.item() == pytest.approx(ref_sums.sum().item(), rel=1e-6)
    assert_same_grads(grads(model, total), ref)
    total, _ = adapter.loss_sum(model, batch)  # later batches: straight to the fallback
    assert total.item() == pytest.approx(ref_sums.sum().item(), rel=1e-6)


def test_seq2seq_decoder_head_matches_the_full_logits(tmp_path, small_chunks):
    tiny_t5 = {
        "model_type": "t5",
        "d_model": 16,
        "d_ff": 32,
        "d_kv": 8,
        "num_heads": 2,
        "num_layers": 1,
        "vocab_size": 260,
        "dropout_rate": 0.0,
    }
    adapter = Seq2SeqAdapter(
        Seq2SeqConfig(tokenizer="byte-level", from_config=tiny_t5, device="cpu", dtype="float32"), base_dir=tmp_path
    )
    tokenizer = adapter.load_tokenizer()
    torch.manual_seed(0)
    model = adapter.load_model(tokenizer).eval()
    batch = adapter.collate(
        tokenizer,
        [
            adapter.encode(
                tokenizer, [ift.Segment(f"Spell {w}: ", False), ift.Segment(w.upper(), True)], source="s", record_id=w
            )
            for w in WORDS
        ],
    )
    labels = batch["labels"]
    decoder_ids = labels.new_full(labels.shape, model.config.pad_token_id)
    decoder_ids[:, 0] = model.config.decoder_start_token_id
    decoder_ids[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == -100, model.config.pad_token_id)
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=decoder_ids
    ).logits.float()
    ref = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none").sum(dim=1)
    ref_grads = grads(model, ref.sum())
    sums, counts = adapter.loss_by_example(model, batch)
    assert head_loss.uses_chunks(model) is True
    assert torch.allclose(sums, ref.detach(), rtol=1e-6) and torch.equal(counts, (labels != -100).sum(dim=1))
    assert_same_grads(grads(model, sums.sum()), ref_grads)


def linear_states(weight: Any, bias: Any, hidden: Any, *, hooked: bool = False) -> head_loss.HeadInputs:
    head = torch.nn.Linear(weight.size(1), weight.size(0), bias=bias is not None)
    head.weight = weight
    head.bias = bias
    if hooked:  # a hook on the head sends the loss through map_chunks, which calls the module
        head.register_forward_hook(lambda m, args, out: None)
    return head_loss.HeadInputs(hidden, head, None, weight.size(0))


def head_case(dtype: Any = torch.float32, bias: bool = True) -> tuple[Any, Any, Any, Any]:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(50, 12).to(dtype))
    b = torch.nn.Parameter(torch.randn(50).to(dtype)) if bias else None
    hidden = torch.randn(17, 12).to(dtype).requires_grad_()
    targets = torch.randint(0, 50, (17,))
    targets[[3, 9]] = -100  # ignored rows: loss 0, no gradient
    return weight, b, hidden, targets


def loss_and_grads(states: head_loss.HeadInputs, targets: Any, upstream: Any) -> tuple[Any, ...]:
    leaves = [t for t in (states.hidden, states.head.weight, states.head.bias) if t is not None and t.requires_grad]
    losses = head_loss.cross_entropy(states, targets, elements=4 * 50)  # chunks of 4 rows: 5 chunks
    return (losses.detach(), *torch.autograd.grad((losses * upstream).sum(), leaves))


@pytest.mark.parametrize("case", ["float32", "no bias", "frozen head", "bf16 autocast", "bf16 weights"])
def test_the_linear_head_path_equals_the_module_path(case):
    """A plain nn.Linear head takes the one-buffer path; a hooked one map_chunks (the module called per chunk,
    autograd summing the chunks' weight gradients). Same losses and gradients, in every dtype setting."""
    dtype = torch.bfloat16 if case == "bf16 weights" else torch.float32
    weight, bias, hidden, targets = head_case(dtype, bias=case != "no bias")
    if case == "frozen head":
        weight.requires_grad_(False)
        bias.requires_grad_(False)
    upstream = torch.linspace(0.5, 2.0, 17)  # per-row weights, as per-source losses give
    results = []
    for hooked in (False, True):
        states = linear_states(weight, bias, hidden, hooked=hooked)
        assert (head_loss._plain_linear(states.head) is None) is hooked
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "bf16 autocast"):
            results.append(loss_and_grads(states, targets, upstream))
    fast, reference = results
    assert len(fast) == len(reference) == 2 + (case != "frozen head") + (case not in ("no bias", "frozen head"))
    assert fast[0][[3, 9]].tolist() == [0.0, 0.0]
    loose = case.startswith("bf16")
    for got, want in zip(fast, reference, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.allclose(got.float(), want.float(), rtol=2e-2 if loose else 1e-5, atol=1e-2 if loose else 1e-6)
    assert fast[1][[3, 9]].abs().sum() == 0  # ignored rows get no gradient on the hidden states


def test_the_linear_head_path_keeps_one_weight_gradient_in_backward():
    """Tensors of the head weight's size allocated in backward: one buffer on the linear-head path, one per chunk
    (and the running sums) through map_chunks."""
    from torch.profiler import ProfilerActivity, profile

    weight, bias, hidden, targets = head_case()
    size = weight.numel() * 4
    counts = []
    for hooked in (False, True):
        states = linear_states(weight, bias, hidden, hooked=hooked)
        losses = head_loss.cross_entropy(states, targets, elements=4 * 50)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            losses.sum().backward()
        counts.append(sum(1 for e in prof.events() if e.self_cpu_memory_usage == size))
        weight.grad = bias.grad = hidden.grad = None
    assert counts[0] == 1 and counts[1] >= 5, counts


def two_micro_batches(weight: Any, bias: Any, *, hooked: bool, tied: bool) -> list[Any]:
    """Two backward passes into the same gradients (an accumulated step); with ``tied``, ``weight`` is also an
    input embedding looked up before the head, as in a tied-embedding model."""
    torch.manual_seed(1)
    for _ in range(2):
        ids = torch.randint(0, 50, (17,))
        inputs = torch.randn(17, 12)
        hidden = (F.embedding(ids, weight) + inputs) if tied else inputs.requires_grad_()
        targets = torch.randint(0, 50, (17,))
        losses = head_loss.cross_entropy(linear_states(weight, bias, hidden, hooked=hooked), targets, elements=200)
        (losses * torch.linspace(0.5, 2.0, 17)).sum().backward()
    return [weight.grad, bias.grad]


@pytest.mark.parametrize("tied", [False, True])
def test_a_later_micro_batch_adds_the_head_gradient_into_weight_grad(tied):
    """Once the weight has a gradient, the linear-head path adds into it in place (no buffer of its own), and
    the sums equal the module path's, with a tied input embedding adding its own part too."""
    from torch.profiler import ProfilerActivity, profile

    results = []
    for hooked in (False, True):
        weight, bias, _, _ = head_case()
        results.append(two_micro_batches(weight, bias, hooked=hooked, tied=tied))
    for got, want in zip(*results, strict=True):  # float32 sums in another order: gradients up to ~17
        assert torch.allclose(got, want, rtol=1e-5, atol=2e-5)

    weight, bias, hidden, targets = head_case()
    head_loss.cross_entropy(linear_states(weight, bias, hidden), targets).sum().backward()
    before, address = weight.grad.clone(), weight.grad.data_ptr()
    losses = head_loss.cross_entropy(linear_states(weight, bias, hidden), targets)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        losses.sum().backward()
    assert weight.grad.data_ptr() == address
    assert torch.allclose(weight.grad, 2 * before, rtol=1e-5, atol=1e-6)
    assert sum(1 for e in prof.events() if e.self_cpu_memory_usage == weight.numel() * 4) == 0


def test_the_head_gradient_is_not_added_where_autograd_would_not_add_it():
    """torch.autograd.grad and backward(inputs=...) leave .grad alone; a gradient hook on the weight sees the
    pass's whole gradient. In each case the in-place addition is not taken."""
    weight, bias, hidden, targets = head_case()
    states = linear_states(weight, bias, hidden)
    head_loss.cross_entropy(states, targets).sum().backward()
    first = weight.grad.clone()

    (by_grad,) = torch.autograd.grad(head_loss.cross_entropy(states, targets).sum(), [hidden])
    head_loss.cross_entropy(states, targets).sum().backward(inputs=[hidden])
    assert torch.equal(weight.grad, first)
    assert by_grad.abs().sum() > 0

    seen = []
    weight.register_hook(lambda g: seen.append(g.clone()))
    head_loss.cross_entropy(states, targets).sum().backward()
    assert len(seen) == 1 and torch.allclose(seen[0], first, rtol=1e-5, atol=1e-6)
    assert torch.allclose(weight.grad, 2 * first, rtol=1e-5, atol=1e-6)
