"""What a resume may change: settings that do not touch the training data or the model."""

from __future__ import annotations

from ift.resume import differences, run_identity


def _identity(**eval_section: object) -> dict:
    resolved = {
        "trainer": {"name": "sft", "learning_rate": 0.01, "log_every": 10},
        "eval": {"fraction": 0.1, "max_examples": 200, "metrics": ["loss"], "samples": 3, **eval_section},
    }
    return run_identity(resolved, data=[{"name": "d", "fingerprint": "f"}], tokenizer="t", template="h", world_size=1)


def test_eval_settings_that_change_the_split_are_part_of_the_identity() -> None:
    assert differences(_identity(), _identity(fraction=0.2)) == ["recipe key eval.fraction: 0.1 -> 0.2"]
    assert differences(_identity(), _identity(max_examples=50)) == ["recipe key eval.max_examples: 200 -> 50"]


def test_eval_settings_that_only_change_what_is_reported_may_change() -> None:
    assert differences(_identity(), _identity(metrics=["loss", "exact_match"], samples=0)) == []


def test_a_plugin_upgraded_between_the_kill_and_the_resume_is_a_change() -> None:
    old = run_identity({}, data=[], tokenizer="t", template="h", world_size=1, plugins={"shout": "ift-shout 1.0"})
    new = run_identity({}, data=[], tokenizer="t", template="h", world_size=1, plugins={"shout": "ift-shout 1.1"})
    assert differences(old, new) == ["plugin 'shout': ift-shout 1.0 -> ift-shout 1.1"]
    before = {k: v for k, v in old.items() if k != "plugins"}  # a checkpoint written before plugins were recorded
    assert differences(before, new) == []
