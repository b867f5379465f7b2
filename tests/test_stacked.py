"""The vectorized P-W trainer (baselines/stacked.py): the engine's gradients, K models at once."""

import math

import pytest
import torch

from sbi_jeffreys.adapters.density import JeffreysDensityEstimator
from sbi_jeffreys.baselines import PenaltyDensityEstimator
from sbi_jeffreys.baselines.stacked import StackedTrainer, fit_stacked
from sbi_jeffreys.datasets import load_toy2d
from sbi_jeffreys.objective import primal_surrogate

SMALL = dict(flow_transforms=2, flow_hidden=(16, 16), energy_width=16, energy_blocks=2, num_zeta_samples=32)
WEIGHTS = [(0.5, 2.0), (2.0, 0.2), (1.0, 1.0)]


def _trainers(x):
    return [PenaltyDensityEstimator(2, w_fw=a, w_rv=b, seed=k, **SMALL).build(x) for k, (a, b) in enumerate(WEIGHTS)]


def test_stacked_gradients_equal_autograd_of_each_engine_surrogate():
    x = torch.randn(48, 2)
    stacked = StackedTrainer(_trainers(x))
    torch.manual_seed(3)
    grads, stats = stacked.gradients(x)
    for k, trainer in enumerate(_trainers(x)):
        torch.manual_seed(3)  # the same base noise as the stacked step (common random numbers)
        t = trainer.terms(x)
        cfg = trainer.config
        loss = primal_surrogate(t, trainer.dual.value, cfg.kl_weight, cfg.score_baseline, cfg.zeta_constraint)
        names = [f"flow.{n}" for n, _ in trainer.flow.named_parameters()]
        names += [f"energy.{n}" for n, _ in trainer.energy.named_parameters()]
        params = [*trainer.flow.parameters(), *trainer.energy.parameters()]
        expected = torch.autograd.grad(loss, params, allow_unused=True)
        for name, g in zip(names, expected):
            g = torch.zeros_like(grads[name][k]) if g is None else g
            assert torch.allclose(grads[name][k], g, rtol=1e-4, atol=1e-6), name
        assert stats["nll_p"][k] == pytest.approx(float(-t.logp_data.detach().mean()), rel=1e-5)


def test_stacked_steps_follow_the_individual_engine_steps():
    x = torch.randn(48, 2)
    stacked = StackedTrainer(_trainers(x))
    for s in (5, 6):
        torch.manual_seed(s)
        stacked.step(x)
    stacked.unstack()
    for k, trainer in enumerate(_trainers(x)):
        for s in (5, 6):
            torch.manual_seed(s)
            trainer.step(x)
        mine = [*stacked.trainers[k].flow.parameters(), *stacked.trainers[k].energy.parameters()]
        theirs = [*trainer.flow.parameters(), *trainer.energy.parameters()]
        diff = torch.cat([(a - b).abs().flatten() for a, b in zip(mine, theirs)])
        # Adam maps float-rounding differences of near-zero gradients to up to one LR (1e-3) step;
        # a wrong weight or gradient would move most parameters by about that much
        assert diff.mean() < 1e-5 and diff.max() < 1e-3
        for a, b in zip(stacked.trainers[k].energy.buffers(), trainer.energy.buffers()):
            assert torch.allclose(a, b, atol=1e-6)  # spectral-norm vectors: the same power iterations


def test_only_frozen_matching_trainers_stack():
    x = torch.randn(16, 2)
    with pytest.raises(ValueError, match="frozen multipliers"):
        StackedTrainer([JeffreysDensityEstimator(2, **SMALL).build(x)])
    odd = PenaltyDensityEstimator(2, w_fw=1.0, **{**SMALL, "num_zeta_samples": 16}).build(x)
    with pytest.raises(ValueError, match="num_zeta_samples"):
        StackedTrainer([_trainers(x)[0], odd])
    with pytest.raises(ValueError, match="at least one"):
        StackedTrainer([])


def test_fit_stacked_gives_each_estimator_its_history_and_learns():
    train, test = load_toy2d("ring8", num_train=256, num_test=500, seed=0)
    ests = [PenaltyDensityEstimator(2, w_fw=a, w_rv=b, seed=0, **SMALL) for a, b in WEIGHTS[1:]]
    initial = float(-JeffreysDensityEstimator(2, seed=0, **SMALL).build(train).flow.log_prob(test[None])[0].mean())
    fit_stacked(ests, train, iterations=90, test=test, eval_every=30, show_progress=False)
    for est in ests:
        hist = est.history
        assert hist["iteration"] == [30, 60, 90] and len(hist["val_nll_p"]) == 3
        assert all(math.isfinite(v) for v in hist["val_log_zeta"])
        assert float(-est.log_prob(test).mean()) == pytest.approx(hist["val_nll_p"][-1], rel=1e-4)
        assert hist["val_nll_p"][-1] < initial - 0.1
        assert est.timing["seconds"] > 0


def test_fit_stacked_resumes_exactly(tmp_path):
    train, test = load_toy2d("ring8", num_train=128, num_test=200, seed=0)

    def run(iterations, **kw):
        ests = [PenaltyDensityEstimator(2, w_fw=a, w_rv=b, seed=0, **SMALL) for a, b in WEIGHTS[:2]]
        torch.manual_seed(11)
        fit_stacked(ests, train, iterations=iterations, test=test, eval_every=10, show_progress=False, **kw)
        return ests

    straight = run(30)
    ckpt = tmp_path / "stack.pt"
    run(20, checkpoint_path=ckpt)  # a run cut after 20 steps
    resumed = run(30, checkpoint_path=ckpt, resume=True)
    for a, b in zip(straight, resumed):
        assert a.history["iteration"] == b.history["iteration"] == [10, 20, 30]
        assert a.history["val_nll_p"] == pytest.approx(b.history["val_nll_p"], abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_graphed_stacked_steps_follow_the_eager_stacked_steps():
    x = torch.randn(48, 2, device="cuda")
    ests = [
        PenaltyDensityEstimator(2, w_fw=a, w_rv=b, seed=k, device="cuda", **SMALL) for k, (a, b) in enumerate(WEIGHTS)
    ]
    eager = StackedTrainer([e.build(x) for e in ests])
    graphed = StackedTrainer([e.build(x) for e in ests], cuda_graph=True)
    for s in range(6):  # three eager warm-up steps, the recording, two replays
        torch.manual_seed(s)
        a = eager.step(x)
        torch.manual_seed(s)
        b = graphed.step(x)
        assert torch.allclose(a["nll_p"], b["nll_p"], rtol=1e-4), s
    assert graphed._graph is not None and graphed._graph.recorded
    diff = torch.cat([(p - graphed.params[key]).abs().flatten() for key, p in eager.params.items()])
    # as above: float rounding of near-zero gradients moves Adam by up to one LR step (1e-3)
    assert diff.mean() < 1e-5 and diff.max() < 1e-3
