"""The preference losses against values worked out by hand from the papers' formulas, and (when TRL is
installed; it is not a dependency) against TRL's own loss code on the same log-probabilities."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from ift.builtin_plugins.preference import losses


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


CHOSEN, REJECTED = torch.tensor([-10.0, -7.5, -20.0]), torch.tensor([-12.0, -7.0, -19.0])
REF_CHOSEN, REF_REJECTED = torch.tensor([-11.0, -8.0, -18.0]), torch.tensor([-11.5, -7.2, -21.0])


def test_dpo_matches_the_sigmoid_loss_by_hand() -> None:
    out = losses.dpo(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, beta=0.5)
    # pair 0: z = 0.5 * ((-10 + 11) - (-12 + 11.5)) = 0.5 * 1.5 = 0.75
    assert out.losses[0].item() == pytest.approx(-math.log(sig(0.75)), abs=1e-6)
    # pair 1: z = 0.5 * (0.5 - 0.2) = 0.15; pair 2: z = 0.5 * (-2 - 2) = -2
    assert out.losses[1].item() == pytest.approx(-math.log(sig(0.15)), abs=1e-6)
    assert out.losses[2].item() == pytest.approx(-math.log(sig(-2.0)), abs=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.5, 0.25, -1.0])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.25, 0.1, 1.0])


def test_dpo_label_smoothing_is_cdpo() -> None:
    out = losses.dpo(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, beta=0.5, label_smoothing=0.2)
    assert out.losses[0].item() == pytest.approx(-0.8 * math.log(sig(0.75)) - 0.2 * math.log(sig(-0.75)), abs=1e-6)


def test_dpo_of_the_reference_itself_is_log_2() -> None:
    out = losses.dpo(CHOSEN, REJECTED, CHOSEN, REJECTED, beta=0.1)
    assert out.losses.tolist() == pytest.approx([math.log(2)] * 3)


def test_orpo_matches_the_odds_ratio_by_hand() -> None:
    chosen_mean, rejected_mean = torch.tensor([-0.5, -2.0]), torch.tensor([-1.0, -1.5])
    out, log_odds = losses.orpo(chosen_mean, rejected_mean, -chosen_mean, beta=0.25)

    def odds(a: float) -> float:
        p = math.exp(a)
        return p / (1 - p)

    expected_odds = math.log(odds(-0.5) / odds(-1.0))
    assert log_odds[0].item() == pytest.approx(expected_odds, abs=1e-5)
    assert out.losses[0].item() == pytest.approx(0.5 - 0.25 * math.log(sig(expected_odds)), abs=1e-5)
    assert out.losses[1].item() == pytest.approx(
        2.0 - 0.25 * math.log(sig(math.log(odds(-2.0) / odds(-1.5)))), abs=1e-5
    )


def test_kto_matches_the_paper_by_hand() -> None:
    logps, ref = torch.tensor([-5.0, -6.0, -4.0]), torch.tensor([-6.0, -5.0, -4.5])
    desirable = torch.tensor([True, False, False])
    per, rewards = losses.kto(
        logps, ref, desirable, torch.tensor(0.3), beta=2.0, desirable_weight=1.5, undesirable_weight=0.5
    )
    assert per[0].item() == pytest.approx(1.5 * (1 - sig(2.0 * (1.0 - 0.3))), abs=1e-6)
    assert per[1].item() == pytest.approx(0.5 * (1 - sig(2.0 * (0.3 - -1.0))), abs=1e-6)
    assert per[2].item() == pytest.approx(0.5 * (1 - sig(2.0 * (0.3 - 0.5))), abs=1e-6)
    assert rewards.tolist() == pytest.approx([2.0, -2.0, 1.0])
    clamped, _ = losses.kto(logps, ref, desirable, torch.tensor(-3.0), beta=2.0)  # the KL estimate is at least 0
    assert clamped[0].item() == pytest.approx(1 - sig(2.0), abs=1e-6)


# --- TRL, on the same log-probabilities ------------------------------------------------------------


def _trl_self(**attributes: Any) -> SimpleNamespace:
    """The few attributes of a TRL trainer its loss code reads, so it runs on given log-probabilities."""
    accelerator = SimpleNamespace(
        device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x, unwrap_model=lambda m: m
    )
    return SimpleNamespace(
        accelerator=accelerator,
        _metrics=defaultdict(lambda: defaultdict(list)),
        aux_loss_enabled=False,
        model=SimpleNamespace(training=True),
        _total_train_tokens=0,
        _tp_size=1,
        precompute_ref_logps=True,
        ld_alpha=None,
        **attributes,
    )


class _GivenLogps:
    """Stands in for the model: returns per-token log-probabilities (one trained token per sequence holding the
    sequence's whole log-probability), as TRL's fused LM head does."""

    def __init__(self, logps: torch.Tensor) -> None:
        self.logps = logps

    def __call__(self, **kwargs: Any) -> SimpleNamespace:
        n = self.logps.numel()
        per_token = torch.stack([self.logps, torch.zeros(n)], dim=1)
        return SimpleNamespace(
            log_probs=per_token,
            entropy=torch.zeros(n, 2),
            mean_logits=torch.zeros(n, 2),
            is_top1=torch.zeros(n, 2, dtype=torch.bool),
            aux_loss=None,
        )


def _completion_batch(n: int) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.ones(n, 3, dtype=torch.long),
        "attention_mask": torch.ones(n, 3, dtype=torch.long),
        "completion_mask": torch.tensor([[0, 1, 0]] * n),
    }


def test_dpo_equals_trl() -> None:
    """TRL's ``sigmoid`` loss (its cDPO smoothing lives in other loss types in TRL 1.x; ours is checked by hand
    above)."""
    trl = pytest.importorskip("trl")
    from trl.trainer.dpo_trainer import DPOTrainer

    for smoothing, loss_type in ((0.0, "sigmoid"),):
        stub = _trl_self(
            beta=0.5,
            label_smoothing=smoothing,
            loss_types=[loss_type],
            loss_weights=[1.0],
            f_divergence_type="reverse_kl",
            use_weighting=False,
            rpo_alpha=None,
            args=SimpleNamespace(gradient_checkpointing_kwargs=None),
        )
        inputs = {**_completion_batch(6), "ref_chosen_logps": REF_CHOSEN, "ref_rejected_logps": REF_REJECTED}
        try:
            theirs = DPOTrainer._compute_loss(stub, _GivenLogps(torch.cat([CHOSEN, REJECTED])), inputs, False)
        except AttributeError as exc:  # another TRL version reads more of its trainer
            pytest.skip(f"TRL {trl.__version__}: {exc}")
        theirs = theirs[0] if isinstance(theirs, tuple) else theirs
        ours = losses.dpo(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, beta=0.5, label_smoothing=smoothing)
        assert ours.losses.mean().item() == pytest.approx(float(theirs), abs=1e-6), (smoothing, trl.__version__)


def test_kto_equals_trl() -> None:
    trl = pytest.importorskip("trl")
    from trl.trainer.kto_trainer import KTOTrainer

    logps, ref = torch.tensor([-5.0, -6.0, -4.0, -9.0]), torch.tensor([-6.0, -5.0, -4.5, -8.0])
    kl_logps, ref_kl = torch.tensor([-7.0, -8.0, -6.0, -9.5]), torch.tensor([-7.5, -8.2, -6.1, -9.0])
    desirable = torch.tensor([True, False, False, True])
    stub = _trl_self(
        beta=0.7,
        desirable_weight=1.5,
        undesirable_weight=0.5,
        loss_type="kto",
        calculate_KL=True,
        args=SimpleNamespace(gradient_checkpointing_kwargs=None),
        _compute_kl_logps=lambda m, b: kl_logps,
    )
    inputs = {**_completion_batch(4), "label": desirable, "ref_logps": ref, "ref_KL_logps": ref_kl}
    try:
        theirs = KTOTrainer._compute_loss(stub, _GivenLogps(logps), inputs, False)
    except AttributeError as exc:
        pytest.skip(f"TRL {trl.__version__}: {exc}")
    theirs = theirs[0] if isinstance(theirs, tuple) else theirs
    kl = (kl_logps - ref_kl).mean()
    per, _ = losses.kto(logps, ref, desirable, kl, beta=0.7, desirable_weight=1.5, undesirable_weight=0.5)
    assert per.mean().item() == pytest.approx(float(theirs), abs=1e-6)


def test_orpo_equals_trl() -> None:
    pytest.importorskip("trl")
    orpo_module = pytest.importorskip("trl.experimental.orpo.orpo_trainer")
    chosen_mean, rejected_mean = torch.tensor([-0.5, -2.0, -0.05]), torch.tensor([-1.0, -1.5, -3.0])
    stub = _trl_self(beta=0.25)
    theirs, chosen_rewards, _, _, _ = orpo_module.ORPOTrainer.odds_ratio_loss(stub, chosen_mean, rejected_mean)
    nll = -chosen_mean
    ours, _ = losses.orpo(chosen_mean, rejected_mean, nll, beta=0.25)
    # TRL: loss = nll - mean(beta * logsigmoid(log odds)); ours is per pair, the same once averaged
    assert ours.losses.mean().item() == pytest.approx((nll.mean() - theirs.mean()).item(), abs=1e-6)
    assert ours.chosen_rewards.tolist() == pytest.approx(chosen_rewards.tolist())
