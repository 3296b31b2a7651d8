"""The trainer and objective contracts catch what they promise to: a trainer that logs no step, one that does not
lower the loss, and an objective whose per-example sums do not add up fail with a message naming the problem;
a plain objective passes every check."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

HEADER = """
import ift
from ift.testing.contracts import ObjectiveContract, TrainerContract

TRAIN = {"max_steps": 3, "batch_size": 2, "learning_rate": 1e-2, "log_every": 1, "max_length": 128}


class Silent(ift.SFTTrainer):
    name = "silent"

    def train(self, ctx):
        quiet = ift.TrainContext(**{**vars(ctx), "log_step": lambda event: None})
        return super().train(quiet)


class Ascent(ift.SFTTrainer):
    name = "ascent"

    def loss(self, ctx, model, batch):
        total, count = super().loss(ctx, model, batch)
        return -total, count


class Nll(ift.Objective):
    name = "plain-nll"

    def loss(self, model, batch):
        sums, counts = self.ctx.adapter.loss_by_example(model, batch)
        return ift.LossTerms(sums.sum(), per_example=(sums, counts))


class Unbalanced(Nll):
    name = "unbalanced"

    def loss(self, model, batch):
        sums, counts = self.ctx.adapter.loss_by_example(model, batch)
        return ift.LossTerms(sums.sum(), per_example=(sums * 2, counts))


@ift.hookimpl
def ift_register_trainers():
    return [Silent, Ascent]


@ift.hookimpl
def ift_register_objectives():
    return [Nll, Unbalanced]

"""

FIXTURE = """
import pytest

import cases
from cases import *  # noqa: F403


@pytest.fixture
def ift_plugins():
    return {"contract-cases": cases}
"""


def outcomes(pytester: pytest.Pytester, body: str) -> tuple[set[str], str]:
    """The failed checks (``Class::test``) and the whole report."""
    pytester.makeconftest('pytest_plugins = ["ift.testing"]')
    pytester.makepyfile(cases=HEADER, test_contract=FIXTURE + body)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "-rf", timeout=300)
    text = result.stdout.str()
    return {
        "::".join(line.split(" ")[1].split("::")[1:]) for line in text.splitlines() if line.startswith("FAILED")
    }, text


def test_a_trainer_that_logs_nothing_fails_the_contract(pytester: pytest.Pytester):
    failed, report = outcomes(
        pytester, "\n\nclass TestSilent(TrainerContract):\n    component = Silent\n    config = TRAIN\n"
    )
    assert failed == {"TestSilent::test_steps_are_logged_with_their_loss"}
    assert "no step was logged" in report


def test_a_trainer_that_raises_the_loss_fails_the_contract(pytester: pytest.Pytester):
    failed, report = outcomes(
        pytester, "\n\nclass TestAscent(TrainerContract):\n    component = Ascent\n    config = TRAIN\n"
    )
    assert "TestAscent::test_a_few_steps_lower_the_training_loss" in failed
    assert "the mean loss of the training examples did not go down" in report


def test_objectives_pass_or_fail_on_their_loss_terms(pytester: pytest.Pytester):
    failed, report = outcomes(
        pytester,
        "\n\nclass TestNll(ObjectiveContract):\n    component = Nll\n    config = TRAIN\n\n\n"
        "class TestUnbalanced(ObjectiveContract):\n    component = Unbalanced\n"
        "    config = TRAIN\n",
    )
    assert failed == {"TestUnbalanced::test_loss_terms_are_well_formed"}
    assert "per-example sums must add up to the loss" in report
