"""``train(flow_warmup=True)``: the flow is first trained by sbi's own NPE loop, then the dual runs
from it on the same split (sbi_jeffreys.adapters.sbi.JeffreysNPE._warm_up_flow)."""

from __future__ import annotations

import pytest
import torch
from sbi.inference import NPE
from sbi.utils import BoxUniform

from sbi_jeffreys.adapters.sbi import JeffreysNPE
from sbi_jeffreys.benchmark.algorithm import _NullTracker

SBI_ARGS = dict(training_batch_size=50, max_num_epochs=4, stop_after_epochs=100)


def toy_data(n: int, seed: int):
    torch.manual_seed(seed)
    prior = BoxUniform(-torch.ones(2), torch.ones(2))
    theta = prior.sample((n,))
    return prior, theta, theta + 0.3 * torch.randn_like(theta)


def _jeffreys(prior, theta, x, seed: int, **kwargs) -> JeffreysNPE:
    torch.manual_seed(seed)
    inference = JeffreysNPE(prior, show_progress_bars=False, tracker=_NullTracker())
    inference.append_simulations(theta, x).train(**SBI_ARGS, num_zeta_samples=4, **kwargs)
    return inference


def test_warmup_is_sbis_npe_training_and_the_dual_keeps_its_split():
    prior, theta, x = toy_data(300, seed=0)
    torch.manual_seed(1)
    npe = NPE(prior, density_estimator="nsf", show_progress_bars=False, tracker=_NullTracker())
    npe.append_simulations(theta, x).train(**SBI_ARGS)
    warm = _jeffreys(prior, theta, x, seed=1, flow_warmup=True)
    s = warm._summary
    # the warm-up is NPE's loop: the same split, the same validation losses, the same best
    assert torch.equal(warm.train_indices, npe.train_indices)
    assert torch.equal(warm.val_indices, npe.val_indices)
    npe_epochs = npe._summary["epochs_trained"][0]
    assert s["warmup_epochs"] == [npe_epochs]
    assert s["warmup_validation_loss"][0] == pytest.approx(npe._summary["best_validation_loss"][0], abs=1e-6)
    assert s["validation_loss"][:npe_epochs] == pytest.approx(npe._summary["validation_loss"], abs=1e-6)
    # then the dual: its own epochs after the warm-up's, both phases in train_seconds
    assert s["epochs_trained"] == [4] and len(s["validation_loss"]) == npe_epochs + 4
    assert s["train_seconds"][-1] >= s["warmup_seconds"][-1] > 0
    assert warm._trainer is not None and warm._trainer.epoch == 4


def test_warmup_changes_where_the_dual_starts():
    prior, theta, x = toy_data(300, seed=0)
    cold = _jeffreys(prior, theta, x, seed=1)
    warm = _jeffreys(prior, theta, x, seed=1, flow_warmup=True)
    assert "warmup_epochs" not in cold._summary
    # 4 NPE epochs + 4 dual epochs fit the flow better than 4 dual epochs alone
    assert warm._summary["best_validation_loss"][-1] < cold._summary["best_validation_loss"][-1]
