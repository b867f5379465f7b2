"""The penalty problem (P-W) as the engine with frozen multipliers: its surrogate gradients are
those of the weighted sum, its weights never move, it equals the dual engine with zero ascent
rates, and a short run learns."""

import pytest
import torch

from sbi_jeffreys.adapters.density import JeffreysDensityEstimator
from sbi_jeffreys.baselines import PenaltyDensityEstimator
from sbi_jeffreys.engine import JeffreysConfig
from sbi_jeffreys.nets import ResidualEnergy, UnconditionalFlow, build_nsf
from sbi_jeffreys.objective import Terms, log_partition, primal_surrogate


def _data(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[-2.0, 0.0], [2.0, 1.0]])
    return centers[torch.randint(0, 2, (n,), generator=g)] + 0.4 * torch.randn(n, 2, generator=g)


def test_pw_surrogate_gradient_is_the_weighted_sum_gradient():
    torch.manual_seed(0)
    flow = UnconditionalFlow(build_nsf(2, transforms=2, hidden_features=(16, 16)), 2)
    energy = ResidualEnergy(2, width=16, blocks=1)
    x = _data(64).unsqueeze(1)  # (N, 1, d): one "condition"
    w = (0.5, 2.0, 1.0)
    y, logp_y = flow.sample_and_log_prob((32,))
    logp_x = flow.log_prob(x.transpose(0, 1))[0]
    f_y, f_z, f_x = energy(y), energy(y.detach()), energy(x.transpose(0, 1))[0]
    log_zeta = log_partition(f_z, logp_y.detach())
    t = Terms(logp_x, f_x, logp_y, f_y, log_zeta, True)
    lam = torch.tensor([*w, 0.0, 0.0])
    params = list(flow.parameters()) + list(energy.parameters())
    ours = torch.autograd.grad(primal_surrogate(t, lam), params, retain_graph=True, allow_unused=True)
    # (P-W) written out: w_fw NLL(p) + w_rv KL(p || q) + w_prx NLL(q), log zeta per eq. 12
    pw = w[0] * (-logp_x.mean()) + w[1] * (logp_y - f_y + log_zeta).mean() + w[2] * (-f_x + log_zeta).mean()
    truth = torch.autograd.grad(pw, params, retain_graph=True, allow_unused=True)
    for a, b in zip(ours, truth):
        if a is None or b is None:
            assert a is None and b is None
            continue
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()


def test_pw_weights_stay_fixed_and_equal_the_engine_with_frozen_multipliers():
    data = _data()
    small = dict(flow_transforms=2, flow_hidden=(16, 16), energy_width=16, energy_blocks=1, num_zeta_samples=32)
    pw = PenaltyDensityEstimator(2, w_fw=0.7, w_rv=0.7, w_prx=0.7, seed=0, **small)
    pw.fit(data, iterations=30, batch_size=100, eval_every=10, show_progress=False)
    lam = pw.trainer.dual.value
    assert torch.allclose(lam, torch.tensor([0.7, 0.7, 0.7, 0.0, 0.0]))
    frozen = JeffreysDensityEstimator(
        2,
        seed=0,
        multiplier_init=0.7,
        multiplier_lr=0.0,
        zeta_multiplier_lr=0.0,
        negative_nll=False,
        **small,
    )
    frozen.fit(data, iterations=30, batch_size=100, eval_every=10, show_progress=False)
    assert pw.history["nll_p"] == frozen.history["nll_p"]
    assert pw.history["kl"] == frozen.history["kl"]


def test_pw_short_run_learns():
    data, test = _data(400, 0), _data(400, 1)
    sizes = dict(flow_transforms=2, flow_hidden=(32, 32), energy_width=32, energy_blocks=2)
    untrained = PenaltyDensityEstimator(2, w_fw=1.0, w_rv=0.5, seed=0, **sizes)
    untrained.build(data)
    est = PenaltyDensityEstimator(2, w_fw=1.0, w_rv=0.5, seed=0, **sizes)
    est.fit(data, iterations=300, batch_size=200, test=test, eval_every=100, show_progress=False)
    before = float(-untrained.log_prob(test).mean())
    after = float(-est.log_prob(test).mean())
    # measured: untrained 3.7, trained 2.1 nats (two well-separated blobs)
    assert after < before - 0.5, (before, after)


def test_pw_bad_weights():
    with pytest.raises(ValueError, match="fixed_weights"):
        JeffreysConfig(fixed_weights=(1.0, -1.0, 1.0))
    with pytest.raises(TypeError, match="w_fw, w_rv, w_prx"):
        PenaltyDensityEstimator(2, fixed_weights=(1, 1, 1))
