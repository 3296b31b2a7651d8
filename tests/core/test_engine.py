"""The training loop's contracts (``ift.train``): exact token-normalised accumulation, the PEFT penalty added for
every objective, an objective's state and a callback's state across a resume, callbacks that log and stop, and
objectives registered by plugins becoming trainers of their name with their own keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import Field

import ift
from ift.builtin_plugins.causal_lm import CausalLMAdapter
from ift.host import PluginHost

TINY = {
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}


class Silent:
    total = 0

    def step(self, *args: Any) -> None:
        pass

    def write(self, message: str) -> None:
        self.last = message


@pytest.fixture
def make_context(tmp_path: Path) -> Any:
    adapter = CausalLMAdapter(CausalLMAdapter.Config(tokenizer="byte-level", from_config=TINY), base_dir=tmp_path)
    tokenizer = adapter.load_tokenizer()
    examples = [
        adapter.encode(
            tokenizer,
            [ift.Segment(f"q{i}\n", False), ift.Segment(f"answer {i}" * (1 + i % 3) + "<|endoftext|>", True)],
            source="s",
            record_id=f"row-{i}",
        )
        for i in range(8)
    ]

    def context(events: list[dict[str, Any]], *, model_seed: int = 0, **kwargs: Any) -> ift.TrainContext:
        torch.manual_seed(model_seed)
        model = adapter.load_model(tokenizer)
        return ift.TrainContext(
            model=model,
            tokenizer=tokenizer,
            adapter=adapter,
            train_examples=examples,
            eval_examples=[],
            seed=0,
            run_dir=tmp_path,
            log_step=events.append,
            evaluate=lambda m, s: {},
            progress=Silent(),
            **kwargs,
        )

    return context


def weights(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


class Counted(ift.Objective):
    """NLL that counts its calls in a state that must survive a resume, and reports a figure."""

    name = "counted"

    def __init__(self, config: ift.ObjectiveConfig) -> None:
        super().__init__(config)
        self.calls = 0

    def loss(self, model: Any, batch: dict[str, Any]) -> ift.LossTerms:
        self.calls += 1
        sums, counts = self.ctx.adapter.loss_by_example(model, batch)
        return ift.LossTerms(
            sums.sum(), per_example=(sums, counts), figures={"tokens_seen": counts.sum().detach().float()}
        )

    def state(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_state(self, state: dict[str, Any] | None) -> None:
        self.calls = (state or {}).get("calls", 0)


def test_accumulated_micro_batches_give_the_gradient_of_one_big_batch(make_context: Any):
    """Token-normalised: 2 micro-batches of 2 update exactly like 1 batch of 4, although their token counts
    differ (the examples have different lengths)."""
    config = dict(
        max_steps=1, shuffle=False, batching="padding", learning_rate=1e-2, warmup_ratio=0.0, max_grad_norm=None
    )
    one = make_context([])
    ift.train(one, ift.NLL(ift.ObjectiveConfig()), ift.TrainingConfig(batch_size=4, **config))
    two = make_context([])
    ift.train(
        two, ift.NLL(ift.ObjectiveConfig()), ift.TrainingConfig(batch_size=2, gradient_accumulation_steps=2, **config)
    )
    a, b = weights(one.model), weights(two.model)
    assert max(float((a[n] - b[n]).abs().max()) for n in a) < 1e-6
    assert any(float((a[n] - weights(make_context([]).model)[n]).abs().max()) > 1e-4 for n in a)  # it moved


def test_figures_and_extra_terms_are_logged_per_unit(make_context: Any):
    class WithPenalty(Counted):
        def loss(self, model: Any, batch: dict[str, Any]) -> ift.LossTerms:
            terms = super().loss(model, batch)
            terms.extra["l2"] = 0.5 * self.units(batch) * torch.ones((), requires_grad=True)
            return terms

    events: list[dict[str, Any]] = []
    ift.train(
        make_context(events),
        WithPenalty(ift.ObjectiveConfig()),
        ift.TrainingConfig(batch_size=4, max_steps=2, log_every=1, shuffle=False, batching="padding"),
    )
    assert [e["step"] for e in events] == [1, 2]
    for event in events:
        assert event["tokens_seen"] == pytest.approx(1.0)  # a sum of trained tokens, per trained token
        assert event["loss_terms"] == {"l2": pytest.approx(0.5)}
        # the logged loss is what was trained: the data loss (per source) plus the extra term
        assert event["loss"] == pytest.approx(event["loss_by_source"]["s"] + 0.5, rel=1e-5)


def test_the_peft_penalty_is_added_whatever_the_objective(make_context: Any, monkeypatch: pytest.MonkeyPatch):
    """An objective that computes its loss without the adapter's help still trains the penalty: the loop adds
    ``penalty * units`` of every micro-batch, so the step's mean loss carries it exactly once."""
    penalty = torch.tensor(3.0, requires_grad=True)
    monkeypatch.setattr(CausalLMAdapter, "training_penalty", lambda self, model: penalty)

    class FromLogits(ift.Objective):
        name = "from-logits"

        def loss(self, model: Any, batch: dict[str, Any]) -> ift.LossTerms:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"][:, 1:]
            return ift.LossTerms(
                torch.nn.functional.cross_entropy(
                    logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum"
                )
            )

    events: list[dict[str, Any]] = []
    ift.train(
        make_context(events),
        FromLogits(ift.ObjectiveConfig()),
        ift.TrainingConfig(
            batch_size=2, gradient_accumulation_steps=2, max_steps=1, log_every=1, shuffle=False, batching="padding"
        ),
    )
    assert events[0]["loss_terms"] == {"peft_penalty": pytest.approx(3.0)}
    assert penalty.grad is not None and float(penalty.grad) == pytest.approx(1.0)  # d(mean loss)/d(penalty)
    assert "loss_by_source" not in events[0]  # the objective gave no per-example split


class Stopper(ift.Callback):
    """Adds a figure to the events, stops after ``at`` steps, and keeps the sum of the steps it saw."""

    name = "stopper"

    def __init__(self, at: int) -> None:
        self.at, self.seen = at, 0

    def on_step_end(self, state: ift.LoopState) -> dict[str, Any] | None:
        self.seen += state.position.step
        return {"seen": self.seen} if state.position.step % 2 == 0 else None

    def should_stop(self, state: ift.LoopState) -> str | None:
        return f"stopper: {self.at} steps are enough" if state.position.step >= self.at else None

    def state(self) -> dict[str, Any]:
        return {"seen": self.seen}

    def load_state(self, state: dict[str, Any] | None) -> None:
        self.seen = (state or {}).get("seen", 0)


def test_a_callback_logs_and_stops_the_run(make_context: Any):
    events: list[dict[str, Any]] = []
    context = make_context(events)
    result = ift.train(
        context,
        ift.NLL(ift.ObjectiveConfig()),
        ift.TrainingConfig(batch_size=2, max_steps=10, log_every=5),
        callbacks=[Stopper(4)],
    )
    assert result.steps == 4 and result.summary["stopped"] == "stopper: 4 steps are enough"
    assert [(e["step"], e.get("seen")) for e in events] == [(2, 3), (4, 10)]  # logged where it added something
    assert context.progress.last == "stopper: 4 steps are enough"


def test_objective_and_callback_state_survive_a_resume_bitwise(make_context: Any, tmp_path: Path):
    """Preempted after step 3 (a checkpoint is saved, :class:`ift.Preempted` raised), then resumed from another
    starting model: the same weights, objective state and callback state as one uninterrupted run."""
    config = ift.TrainingConfig(batch_size=2, max_steps=6, log_every=1, learning_rate=1e-2)
    whole = make_context([])
    objective, callback = Counted(ift.ObjectiveConfig()), Stopper(99)
    ift.train(whole, objective, config, callbacks=[callback])

    steps = iter(range(1, 100))
    first = make_context([], checkpoint_dir=tmp_path / "b", should_stop=lambda: next(steps) >= 3)
    with pytest.raises(ift.Preempted, match="at step 3"):
        ift.train(first, Counted(ift.ObjectiveConfig()), config, callbacks=[Stopper(99)])
    (checkpoint,) = sorted((tmp_path / "b").glob("step-*"))
    resumed_objective, resumed_callback = Counted(ift.ObjectiveConfig()), Stopper(99)
    resumed = make_context([], model_seed=1, checkpoint_dir=tmp_path / "c", resume_from=checkpoint)
    ift.train(resumed, resumed_objective, config, callbacks=[resumed_callback])

    assert resumed_objective.calls == objective.calls == 6
    assert resumed_callback.seen == callback.seen == sum(range(1, 7))
    a, b = weights(whole.model), weights(resumed.model)
    assert all(torch.equal(a[n], b[n]) for n in a)


class Smoothed(ift.Objective):
    """A plugin objective with a key of its own."""

    name = "nll-smoothed"

    class Config(ift.ObjectiveConfig):
        smoothing: float = Field(0.1, ge=0, lt=1)

    def loss(self, model: Any, batch: dict[str, Any]) -> ift.LossTerms:
        sums, counts = self.ctx.adapter.loss_by_example(model, batch)
        return ift.LossTerms((1 - self.config.smoothing) * sums.sum())  # type: ignore[attr-defined]


class ObjectivePlugin:
    @staticmethod
    @ift.hookimpl
    def ift_register_objectives() -> list[type]:
        return [Smoothed]


def test_a_registered_objective_is_a_trainer_with_the_loops_keys_and_its_own(host: PluginHost):
    host.register(ObjectivePlugin(), "objective-plugin", distribution="ift-smooth", version="1.2")
    registered = host.get("trainer", "nll-smoothed")
    assert (registered.plugin, registered.distribution, registered.version) == ("objective-plugin", "ift-smooth", "1.2")
    config = registered.cls.Config(smoothing=0.25, learning_rate=1e-3, max_steps=2)
    trainer = registered.cls(config)
    objective = trainer.objective(None)
    assert isinstance(objective, Smoothed) and objective.config.smoothing == 0.25
    assert isinstance(trainer, ift.SFTTrainer)
    with pytest.raises(Exception, match="smoothing"):
        registered.cls.Config(smoothing=2.0)


def test_an_objective_key_that_the_loop_has_is_refused_naming_the_plugin(host: PluginHost):
    class Clash(ift.Objective):
        name = "clash"

        class Config(ift.ObjectiveConfig):
            learning_rate: float = 1.0

        def loss(self, model: Any, batch: dict[str, Any]) -> ift.LossTerms:
            raise NotImplementedError

    class ClashPlugin:
        @staticmethod
        @ift.hookimpl
        def ift_register_objectives() -> list[type]:
            return [Clash]

    host.register(ClashPlugin(), "clash-plugin")
    with pytest.raises(ift.PluginError, match="learning_rate, which the training loop's keys already use") as err:
        host.names("trainer")
    assert "clash-plugin" in str(err.value)


class EveryThird(ift.Callback):
    """Asks for an evaluation every third step and records what it saw."""

    name = "every-third"

    def __init__(self) -> None:
        self.seen: list[tuple[int, Any]] = []

    def should_evaluate(self, state: ift.LoopState) -> bool:
        return state.position.step % 3 == 0

    def on_evaluate(self, state: ift.LoopState, result: dict[str, Any]) -> None:
        self.seen.append((state.position.step, result["overall"]["loss"]))


def test_a_callback_schedules_evaluations_and_sees_their_results(make_context: Any):
    stages: list[str] = []
    context = make_context([])
    context.evaluate = lambda model, stage: stages.append(stage) or {"overall": {"loss": float(len(stages))}}
    callback = EveryThird()
    ift.train(
        context, ift.NLL(ift.ObjectiveConfig()), ift.TrainingConfig(batch_size=2, max_steps=7), callbacks=[callback]
    )
    assert stages == ["step-3", "step-6"] and callback.seen == [(3, 1.0), (6, 2.0)]


@pytest.mark.parametrize("name", ["", "loop", "trainer"])
def test_a_callback_needs_a_name_of_its_own(make_context: Any, name: str):
    callback = ift.Callback()
    callback.name = name
    with pytest.raises(ift.RunError, match=f"callback {name!r} \\(Callback\\): every callback needs a name"):
        ift.train(
            make_context([]), ift.NLL(ift.ObjectiveConfig()), ift.TrainingConfig(max_steps=1), callbacks=[callback]
        )


def test_the_loop_trains_on_the_examples_it_is_given_and_reports_their_sources(make_context: Any):
    """``ift.train(..., examples=...)``: the declared way to train on other examples than the context's (replay,
    curricula); the per-source figures count them, and the context's own list is left alone."""
    events: list[dict[str, Any]] = []
    ctx = make_context(events)
    own = list(ctx.train_examples)
    added = [dataclasses.replace(e, source="added", record_id=f"added-{i}") for i, e in enumerate(own[:4])]
    config = ift.TrainingConfig(batch_size=4, epochs=1, log_every=1, shuffle=False, batching="padding")
    result = ift.train(ctx, ift.NLL(ift.ObjectiveConfig()), config, examples=own + added)
    assert result.steps == 3 and ctx.train_examples == own  # 12 examples in batches of 4
    trained: dict[str, int] = {}
    for event in events:
        for source, n in event["trainable_tokens_by_source"].items():
            trained[source] = trained.get(source, 0) + n
    assert trained == {
        "s": sum(e.trainable_tokens for e in own),
        "added": sum(e.trainable_tokens for e in added),
    }


class Calls(ift.NLL):
    """NLL that records the examples of each forward pass."""

    name = "nll"

    def setup(self, ctx: ift.TrainContext, model: Any) -> None:
        self.passes: list[list[str]] = []

    def loss(self, model: Any, batch: dict[str, Any]) -> ift.LossTerms:
        self.passes.append(list(batch["record_ids"]))
        return super().loss(model, batch)


@pytest.mark.parametrize("batching", ["padding", "length-grouped", "padding-free", "packing"])
def test_a_micro_batch_split_into_passes_trains_exactly_as_one_pass(make_context: Any, batching: str):
    """``max_tokens_per_forward``: each micro-batch runs as several forward/backward passes of whole examples
    and updates as the unsplit micro-batch does (the same loss, per-source figures and weights), every example
    trained once per epoch."""
    config = dict(
        batch_size=4, epochs=1, shuffle=False, batching=batching, learning_rate=1e-2, log_every=1, max_length=64
    )
    runs = {}
    for budget in ("none", 24):
        events: list[dict[str, Any]] = []
        ctx = make_context(events)
        objective = Calls(ift.ObjectiveConfig())
        ift.train(ctx, objective, ift.TrainingConfig(max_tokens_per_forward=budget, **config))
        runs[budget] = (events, weights(ctx.model), objective.passes)
    (whole, a, one), (split, b, many) = runs["none"], runs[24]
    assert len(many) > len(one) and sorted(sum(many, [])) == sorted(sum(one, []))  # split, each example once
    if batching != "packing":  # packed rows of 64 tokens: one row per pass
        lengths = {e.record_id: len(e.input_ids) for e in make_context([]).train_examples}
        for ids in many:
            cost = (
                sum(lengths[i] for i in ids) if batching == "padding-free" else max(lengths[i] for i in ids) * len(ids)
            )
            assert len(ids) == 1 or cost <= 24
    assert [e["loss"] for e in split] == pytest.approx([e["loss"] for e in whole], rel=1e-5)
    assert [e["tokens"] for e in split] == [e["tokens"] for e in whole]
    assert [e["trainable_tokens_by_source"] for e in split] == [e["trainable_tokens_by_source"] for e in whole]
    assert max(float((a[n] - b[n]).abs().max()) for n in a) < 1e-6


def test_an_objective_that_couples_its_examples_is_never_split(make_context: Any):
    class Coupled(Calls):
        def splits(self) -> bool:
            return False

    config = dict(batch_size=4, max_steps=1, shuffle=False, batching="padding")
    objective = Coupled(ift.ObjectiveConfig())
    ift.train(make_context([]), objective, ift.TrainingConfig(**config))  # auto: not split
    assert [len(p) for p in objective.passes] == [4]
    with pytest.raises(ift.RecipeError, match="the .nll. objective couples the examples"):
        ift.train(
            make_context([]), Coupled(ift.ObjectiveConfig()), ift.TrainingConfig(max_tokens_per_forward=8, **config)
        )


def test_automatic_checkpointing_follows_the_model_and_is_reported(make_context: Any, monkeypatch: pytest.MonkeyPatch):
    """``gradient_checkpointing = "auto"``: off for a model whose max_length example fits the budget of a pass,
    on (and reported in the summary) once it does not; an explicit false wins."""
    import ift.batching

    config = dict(batch_size=4, max_steps=1, shuffle=False, batching="padding")
    result = ift.train(make_context([]), ift.NLL(ift.ObjectiveConfig()), ift.TrainingConfig(**config))
    assert result.summary["gradient_checkpointing"] is False
    assert result.summary["max_tokens_per_forward"] > 10_000
    monkeypatch.setattr(ift.batching, "CPU_ACTIVATION_BUDGET", 1000)  # the tiny model's 1,024-token example: 1.2 MB
    monkeypatch.setattr(ift.batching, "CPU_CHECKPOINTED_BUDGET", 500)
    ctx = make_context([])
    result = ift.train(ctx, ift.NLL(ift.ObjectiveConfig()), ift.TrainingConfig(**config))
    assert result.summary["gradient_checkpointing"] is True and ctx.model.model.gradient_checkpointing
    assert result.summary["max_tokens_per_forward"] == 128  # the smallest automatic budget
    off = ift.train(
        make_context([]), ift.NLL(ift.ObjectiveConfig()), ift.TrainingConfig(gradient_checkpointing=False, **config)
    )
    assert off.summary["gradient_checkpointing"] is False


def test_the_default_optimizer_is_fused_adamw_with_decay_on_matrices_only():
    from ift.engine import TrainingConfig, adamw

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 3))
    twin = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 3))
    twin.load_state_dict(net.state_dict())
    config = TrainingConfig(learning_rate=0.05, weight_decay=0.1)
    fused = adamw(net, config)
    assert fused.defaults["fused"] is True
    assert [g["weight_decay"] for g in fused.param_groups] == [0.1, 0.0]
    assert [len(g["params"]) for g in fused.param_groups] == [2, 4]  # two weight matrices; biases and the norm
    looped = torch.optim.AdamW(
        [
            {"params": [p for p in twin.parameters() if p.ndim >= 2], "weight_decay": 0.1},
            {"params": [p for p in twin.parameters() if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=0.05,
        betas=config.adam_betas,
        foreach=False,
    )
    x = torch.randn(5, 6)
    for _ in range(3):  # the same updates as the Python loop, to float tolerance
        for model, opt in ((net, fused), (twin, looped)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_default_optimizer_is_not_fused_for_a_parameter_torch_cannot_fuse():
    from ift.engine import TrainingConfig, adamw

    class Odd(torch.nn.Parameter):  # a tensor subclass (as a sharded or quantized parameter is)
        pass

    net = torch.nn.Linear(3, 2)
    net.weight = Odd(net.weight.detach().clone())
    assert not adamw(net, TrainingConfig()).defaults["fused"]


def test_the_loop_asks_for_the_allocator_threshold_of_its_run(make_context: Any, monkeypatch: pytest.MonkeyPatch):
    """Full fine-tuning gets the 2 MiB threshold without checkpointing and with ``auto`` checkpointing on; a
    checkpointed run whose weights are mostly frozen, or one with ``gradient_checkpointing = true``, gets 128 KiB
    (``ift.allocator.threshold_for``)."""
    import ift.allocator
    import ift.batching

    asked: list[int] = []
    monkeypatch.setattr(ift.allocator, "tune_for_training", lambda threshold: asked.append(threshold) or True)
    monkeypatch.setattr(ift.batching, "checkpoints_by_default", lambda *args: True)  # auto: on
    config = dict(batch_size=4, max_steps=1, shuffle=False, batching="padding")
    for checkpointing in (False, True, "auto"):
        cfg = ift.TrainingConfig(gradient_checkpointing=checkpointing, **config)
        ift.train(make_context([]), ift.NLL(ift.ObjectiveConfig()), cfg)
        ctx = make_context([])
        for name, p in ctx.model.named_parameters():
            p.requires_grad_("embed" in name)  # the tiny model's embeddings: a small part of its weights
        ift.train(ctx, ift.NLL(ift.ObjectiveConfig()), cfg)
    assert asked == [2 << 20, 2 << 20, 128 << 10, 128 << 10, 2 << 20, 128 << 10]
