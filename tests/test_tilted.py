r"""The flow-tilted proxy f = log p_bar + g (sbi_jeffreys.objective.tilted): its surrogate
gradients against autograd of the Lagrangian with p_bar a frozen copy of the flow, its exact
log zeta for a constant correction, its importance-resampling posterior against known tilts of
Gaussians, its multiplier bounds, and clear errors for bad options."""

import copy
import math

import pytest
import torch
from sbi.utils import BoxUniform
from torch import nn

from sbi_jeffreys.adapters.posterior import ImportancePosterior
from sbi_jeffreys.engine import JeffreysConfig, JeffreysTrainer
from sbi_jeffreys.nets import FiLMResidualEnergy, FlowTiltedEnergy, energy_nn
from sbi_jeffreys.objective import DualState, lagrangian_value, log_partition, primal_surrogate, tilted_terms
from sbi_jeffreys.objective.lagrangian import Terms, constraint_values

LAM = torch.tensor([0.7, 0.3, 0.5, 0.2, 0.1], dtype=torch.float64)


class CondGauss(nn.Module):
    """A conditional 'flow' y = mu(c) + sigma * u with the engine's (S, C, d) interface."""

    def __init__(self, d: int = 2, k: int = 3):
        super().__init__()
        self.mu = nn.Linear(k, d).double()
        self.log_sigma = nn.Parameter(torch.randn(d, dtype=torch.float64) * 0.3)

    def _dist(self, c):
        return torch.distributions.Normal(self.mu(c), self.log_sigma.exp())

    def log_prob(self, inputs, condition):
        return self._dist(condition).log_prob(inputs).sum(-1)

    def sample_and_log_prob(self, shape, condition):
        y = self._dist(condition).rsample(tuple(shape))
        return y, self.log_prob(y, condition)

    def sample(self, shape, condition):
        with torch.no_grad():
            return self.sample_and_log_prob(shape, condition)[0]


def _setup(seed=0, n=6, m=32):
    torch.manual_seed(seed)
    flow = CondGauss()
    g = FiLMResidualEnergy(2, 3, width=16, blocks=2, spectral_norm=False).double()
    c = torch.randn(n, 3, dtype=torch.float64)
    x = torch.randn(1, n, 2, dtype=torch.float64)
    u = torch.randn(m, n, 2, dtype=torch.float64)
    return flow, g, c, x, u


def _rsample(flow, u, c):
    y = flow.mu(c) + flow.log_sigma.exp() * u
    return y, flow.log_prob(y, c)


@pytest.mark.parametrize("kl_weight", [1.0, 0.5])
def test_tilted_gradients_equal_lagrangian_with_frozen_base(kl_weight):
    flow, g, c, x, u = _setup()
    base = copy.deepcopy(flow).requires_grad_(False)  # p_bar: the flow at theta_bar = theta, frozen
    theta_params, psi_params = list(flow.parameters()), list(g.parameters())
    y, logp_y = _rsample(flow, u, c)
    logp_x = flow.log_prob(x, c)

    # the Lagrangian of the family f = log p_bar + g, written out with a true frozen base
    def f(t):
        return base.log_prob(t, c) + g(t, c)

    truth = Terms(logp_x[0], f(x)[0], logp_y, f(y), log_partition(f(y.detach()), logp_y.detach()), True)
    value = lagrangian_value(truth, LAM, eps_zeta=0.5, negative_nll=True, kl_weight=kl_weight)
    g_true = torch.autograd.grad(value, theta_params + psi_params, retain_graph=True)

    t = tilted_terms(logp_x[0], g(x, c)[0], logp_y, g(y, c), g(y.detach(), c), reparameterized=True)
    surrogate = primal_surrogate(t, LAM, kl_weight, zeta_constraint="box", eps_zeta=0.5)
    g_ours = torch.autograd.grad(surrogate, theta_params + psi_params, retain_graph=True)

    # psi: exactly equal; theta: equal up to the dropped term w lambda_rv E[d/dtheta log p_theta(y)|_y],
    # whose expectation is 0 (the score's mean) and whose per-sample value we add back here
    dropped = torch.autograd.grad(kl_weight * LAM[1] * flow.log_prob(y.detach(), c).mean(), theta_params)
    for a, b, d in zip(g_true[: len(theta_params)], g_ours[: len(theta_params)], dropped):
        assert torch.allclose(a, b + d, atol=1e-10), (a - b - d).abs().max()
    for a, b in zip(g_true[len(theta_params) :], g_ours[len(theta_params) :]):
        assert torch.allclose(a, b, atol=1e-10)
    assert any(float(p.abs().max()) > 0 for p in g_ours)
    # and the values of every constraint agree with the written-out family
    ours, true = constraint_values(t, kl_weight), constraint_values(truth, kl_weight)
    for key in ours:
        assert torch.allclose(ours[key], true[key], atol=1e-10), key


def test_dropped_theta_term_has_mean_zero():
    flow, _, c, _, _ = _setup(n=2)
    torch.manual_seed(1)
    y = flow.sample((200_000,), c)
    grads = torch.autograd.grad(flow.log_prob(y, c).mean(), list(flow.parameters()))
    assert max(float(gr.abs().max()) for gr in grads) < 0.02


def test_tilted_score_form_has_the_same_values_and_advantage():
    flow, g, c, x, u = _setup()
    y, logp_y = _rsample(flow, u, c)
    y = y.detach()
    logp_y = flow.log_prob(y, c)
    logp_x = flow.log_prob(x, c)[0]
    rep = tilted_terms(logp_x, g(x, c)[0], logp_y, g(y, c), g(y, c), reparameterized=True)
    score = tilted_terms(logp_x, g(x, c)[0], logp_y, g(y, c), g(y, c), reparameterized=False)
    for key, v in constraint_values(rep).items():
        assert torch.allclose(v, constraint_values(score)[key], atol=1e-10), key
    assert torch.allclose(score.logp_rv - score.f_rv, -g(y, c), atol=1e-12)  # advantage -g


class Constant(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(value)))

    def forward(self, inputs, condition=None):
        return self.value.expand(inputs.shape[:-1])


@pytest.mark.parametrize("num_rv_samples", [None, 1])
def test_engine_tilted_log_zeta_is_exact_for_a_constant_correction(num_rv_samples):
    torch.manual_seed(0)
    flow = CondGauss().float()
    trainer = JeffreysTrainer(
        flow, FlowTiltedEnergy(Constant(0.8)), JeffreysConfig(num_zeta_samples=7, num_rv_samples=num_rv_samples)
    )
    t = trainer.terms(torch.randn(5, 2), torch.randn(5, 3))
    assert torch.allclose(t.log_zeta, torch.full((5,), 0.8), atol=1e-6)
    # q = p e^0.8 / e^0.8 = p: the proxy's NLL equals the flow's and the reverse KL is 0
    values = constraint_values(t)
    assert torch.allclose(values["nll_q"], values["nll_p"], atol=1e-5)
    assert abs(float(values["kl"])) < 1e-6


def test_engine_tilted_training_step_moves_g_and_flow():
    torch.manual_seed(0)
    flow = CondGauss().float()
    g = energy_nn("flow_tilted", width=16, blocks=1)(torch.randn(50, 2), torch.randn(50, 3))
    trainer = JeffreysTrainer(flow, g, JeffreysConfig(num_zeta_samples=8, num_rv_samples=1, energy_lr=1e-2))
    before = [p.detach().clone() for p in (*flow.parameters(), *g.parameters())]
    theta, x = torch.randn(20, 2) + 2.0, torch.randn(20, 3)
    stats = trainer.step(theta, x)
    after = list((*flow.parameters(), *g.parameters()))
    assert all(math.isfinite(float(v)) for v in stats.values())
    assert sum(int(not torch.equal(a, b)) for a, b in zip(before, after)) >= 3
    # the head started at zero: g was identically 0, so q = p and log zeta = 0 at the first step
    assert abs(float(stats["log_zeta"])) < 1e-6


# ------------------------------------------------------------------ importance resampling
class StdNormal(nn.Module):
    """N(0, I) in d dimensions whatever the condition, with the flow interface."""

    def __init__(self, d):
        super().__init__()
        self.d = d
        self.dummy = nn.Parameter(torch.zeros(()))

    def log_prob(self, t, c):
        return torch.distributions.Normal(0.0, 1.0).log_prob(t).sum(-1)

    def sample(self, shape, c):
        return torch.randn(*shape, c.shape[0], self.d)

    def sample_and_log_prob(self, shape, c):
        t = self.sample(shape, c)
        return t, self.log_prob(t, c)


class QuadraticTilt(nn.Module):
    """g(theta) = b.theta - theta' A theta / 2: N(0, I) e^g is N(S b, S) with S = (I + A)^-1."""

    def __init__(self, b, a):
        super().__init__()
        self.b, self.a = b, a

    def forward(self, t, c=None):
        return t @ self.b - 0.5 * ((t @ self.a) * t).sum(-1)


def _tilted_gaussian():
    b = torch.tensor([1.0, -0.5, 0.3])
    a = torch.tensor([[0.5, 0.2, 0.0], [0.2, 1.0, 0.1], [0.0, 0.1, 0.3]])
    cov = torch.linalg.inv(torch.eye(3) + a)
    return b, a, cov @ b, cov


def test_importance_posterior_recovers_a_tilted_gaussian():
    b, a, mean, cov = _tilted_gaussian()
    prior = BoxUniform(-20 * torch.ones(3), 20 * torch.ones(3))
    post = ImportancePosterior(StdNormal(3), FlowTiltedEnergy(QuadraticTilt(b, a)), prior, oversampling=16)
    torch.manual_seed(0)
    s = post.sample((40_000,), x=torch.zeros(1, 2), show_progress_bars=False)
    assert s.shape == (40_000, 3)
    assert torch.allclose(s.mean(0), mean, atol=0.03)
    assert torch.allclose(torch.cov(s.T), cov, atol=0.03)
    assert 0.3 < float(post.effective_sample_size) < 1.0
    # log_prob is the normalized tilted Gaussian (log zeta from 1,000 proposals: a few 0.01 nats)
    theta = torch.randn(5, 3) * 0.5
    truth = torch.distributions.MultivariateNormal(mean, cov).log_prob(theta)
    assert torch.allclose(post.log_prob(theta, x=torch.zeros(1, 2)), truth, atol=0.1)


def test_importance_posterior_of_a_free_energy_and_batched_conditions():
    _, _, mean, cov = _tilted_gaussian()
    target = torch.distributions.MultivariateNormal(mean, cov)

    class Free(nn.Module):  # an unnormalized free energy: log N(mean, cov) + 3
        def forward(self, t, c=None):
            return target.log_prob(t) + 3.0

    prior = BoxUniform(-20 * torch.ones(3), 20 * torch.ones(3))
    post = ImportancePosterior(StdNormal(3), Free(), prior, oversampling=32, num_zeta_samples=20_000)
    torch.manual_seed(1)
    s = post.sample_batched((20_000,), x=torch.zeros(2, 2), show_progress_bars=False)
    assert s.shape == (20_000, 2, 3)
    for j in range(2):
        assert torch.allclose(s[:, j].mean(0), mean, atol=0.04)
    assert abs(float(post.log_zeta(torch.zeros(1, 2))[0]) - 3.0) < 0.05


def test_importance_posterior_respects_the_prior_support():
    prior = BoxUniform(torch.zeros(1), torch.ones(1))  # only a sliver of N(0, 1) mass... 34%
    post = ImportancePosterior(StdNormal(1), FlowTiltedEnergy(Constant(0.0)), prior)
    s = post.sample((5_000,), x=torch.zeros(1, 2), show_progress_bars=False)
    assert float(s.min()) >= 0.0 and float(s.max()) <= 1.0
    assert math.isinf(float(post.log_prob(torch.tensor([[-0.5]]), x=torch.zeros(1, 2))))


class Linear(nn.Module):
    """g(theta) = theta_0: N(0, 1) e^g is N(1, 1) with log zeta = 1/2."""

    def forward(self, t, c=None):
        return t[..., 0]


def test_log_ratio_is_the_closed_form_log_q_minus_log_p_with_and_without_truncation():
    torch.manual_seed(0)
    theta, x = torch.tensor([[0.2], [1.5], [3.0]]), torch.zeros(3, 2)
    # wide box: log q - log p = theta - 1/2 (zeta from 50,000 draws: about 0.01 nats)
    wide = ImportancePosterior(
        StdNormal(1),
        FlowTiltedEnergy(Linear()),
        BoxUniform(-20 * torch.ones(1), 20 * torch.ones(1)),
        num_zeta_samples=50_000,
    )
    assert torch.allclose(wide.log_ratio(theta, x), theta[:, 0] - 0.5, atol=0.03)
    # box [0, 20]: q = N(1, 1)/Phi(1) and p = N(0, 1)/(1/2) on it
    half = ImportancePosterior(
        StdNormal(1),
        FlowTiltedEnergy(Linear()),
        BoxUniform(torch.zeros(1), 20 * torch.ones(1)),
        num_zeta_samples=50_000,
    )
    phi1 = torch.distributions.Normal(0.0, 1.0).cdf(torch.tensor(1.0))
    truth = theta[:, 0] - 0.5 - torch.log(phi1) + math.log(0.5)
    assert torch.allclose(half.log_ratio(theta, x), truth, atol=0.03)
    # a free energy log N(1, 1) + 3 is the same q: its ratio does not see the constant
    normal = torch.distributions.Normal(1.0, 1.0)

    class Free(nn.Module):
        def forward(self, t, c=None):
            return normal.log_prob(t[..., 0]) + 3.0

    free = ImportancePosterior(
        StdNormal(1), Free(), BoxUniform(-20 * torch.ones(1), 20 * torch.ones(1)), num_zeta_samples=50_000
    )
    assert torch.allclose(free.log_ratio(theta, x), theta[:, 0] - 0.5, atol=0.03)
    with pytest.raises(ValueError, match="pair up"):
        wide.log_ratio(theta, torch.zeros(2, 2))


def test_max_correction_bounds_g_smoothly():
    torch.manual_seed(0)
    big = QuadraticTilt(torch.tensor([50.0, 0.0, 0.0]), torch.zeros(3, 3))  # g = 50 theta_0
    bounded = FlowTiltedEnergy(big, max_correction=3.0)
    theta = torch.randn(1000, 3)
    g = bounded(theta)
    assert float(g.abs().max()) <= 3.0 and float(g.abs().max()) > 2.9
    small = torch.tensor([[1e-3, 0.0, 0.0]])  # tanh is the identity near 0
    assert torch.allclose(bounded(small), big(small), rtol=1e-4)
    with pytest.raises(ValueError, match="max_correction"):
        FlowTiltedEnergy(big, max_correction=0.0)
    with pytest.raises(ValueError, match="max_correction"):
        energy_nn("film_resnet", max_correction=3.0)


def test_degenerate_weights_fall_back_to_the_flow_below_min_ess():
    steep = QuadraticTilt(torch.tensor([20.0]), torch.zeros(1, 1))  # q = N(20, 1), far beyond N(0, 1)'s draws
    prior = BoxUniform(-50 * torch.ones(1), 50 * torch.ones(1))
    torch.manual_seed(0)
    pure = ImportancePosterior(StdNormal(1), FlowTiltedEnergy(steep), prior)
    s = pure.sample((2_000,), x=torch.zeros(1, 2), show_progress_bars=False)
    assert float(pure.effective_sample_size) < 0.01 and float(s.std()) < 0.1  # a few draws, repeated
    guarded = ImportancePosterior(StdNormal(1), FlowTiltedEnergy(steep), prior, min_ess=1 / 16)
    s = guarded.sample_batched((20_000,), x=torch.zeros(2, 2), show_progress_bars=False)
    assert guarded.fell_back is not None and bool(guarded.fell_back.all())
    assert abs(float(s.mean())) < 0.03 and abs(float(s.std()) - 1.0) < 0.03  # the flow, N(0, 1)
    mild = ImportancePosterior(StdNormal(1), FlowTiltedEnergy(Linear()), prior, min_ess=1 / 16)
    s = mild.sample((20_000,), x=torch.zeros(1, 2), show_progress_bars=False)
    assert mild.fell_back is not None and not bool(mild.fell_back.any()) and abs(float(s.mean()) - 1.0) < 0.05
    # log_prob follows the samples: the flow's density where the sampler falls back, else q's
    theta, x = torch.linspace(-3, 3, 7).unsqueeze(-1), torch.zeros(1, 2)
    normal = torch.distributions.Normal
    assert torch.allclose(guarded.log_prob(theta, x=x), normal(0.0, 1.0).log_prob(theta[:, 0]), atol=1e-4)
    assert torch.allclose(mild.log_prob(theta, x=x), normal(1.0, 1.0).log_prob(theta[:, 0]), atol=0.15)
    assert (pure.log_prob(theta, x=x) - normal(0.0, 1.0).log_prob(theta[:, 0])).abs().max() > 10  # no guard: q's
    with pytest.raises(ValueError, match="min_ess"):
        ImportancePosterior(StdNormal(1), Constant(0.0), prior, min_ess=2.0)


def test_bad_options_get_clear_errors():
    prior = BoxUniform(torch.zeros(1), torch.ones(1))
    with pytest.raises(ValueError, match="oversampling"):
        ImportancePosterior(StdNormal(1), Constant(0.0), prior, oversampling=0)
    with pytest.raises(ValueError, match="num_zeta_samples"):
        ImportancePosterior(StdNormal(1), Constant(0.0), prior, num_zeta_samples=0)
    with pytest.raises(ValueError, match="Unknown energy model"):
        energy_nn("tilted")
    with pytest.raises(ValueError, match="max_rv"):
        DualState(min_rv=0.5, max_rv=0.1)


def test_rv_multiplier_bounds_hold_under_ascent():
    dual = DualState(init=0.01, lr=1.0, min_rv=0.3, max_rv=0.6, negative_nll=False)
    assert float(dual.value[1]) == pytest.approx(0.3)
    dual.ascend(torch.tensor([0.0, 10.0, 0.0, 0.0, 0.0]))
    assert float(dual.value[1]) == pytest.approx(0.6)
    dual.ascend(torch.tensor([0.0, -10.0, 0.0, 0.0, 0.0]))
    assert float(dual.value[1]) == pytest.approx(0.3)
    off = DualState(init=0.5, max_rv=0.0)
    assert float(off.value[1]) == 0.0


def test_rv_multiplier_ratio_floor_follows_the_forward_multiplier():
    dual = DualState(init=0.01, lr=1.0, min_rv_ratio=0.5, negative_nll=False)
    dual.ascend(torch.tensor([2.0, -5.0, 0.0, 0.0, 0.0]))  # lambda_fw -> 2.01; lambda_rv pushed below 0
    assert float(dual.value[0]) == pytest.approx(2.01) and float(dual.value[1]) == pytest.approx(1.005)
    dual.ascend(torch.tensor([0.0, 3.0, 0.0, 0.0, 0.0]))  # above the floor it moves freely
    assert float(dual.value[1]) == pytest.approx(4.005)
    dual.ascend(torch.tensor([-1.0, -10.0, 0.0, 0.0, 0.0]))  # the floor moves down with lambda_fw
    assert float(dual.value[1]) == pytest.approx(0.505)
    with pytest.raises(ValueError, match="min_rv_ratio"):
        DualState(min_rv_ratio=-1.0)
    with pytest.raises(ValueError, match="min_rv_ratio"):
        DualState(min_rv_ratio=1.0, max_rv=0.0)


# ------------------------------------------------------------------ latent-space MALA
def _sbi_flow(kind):
    from sbi.neural_nets import posterior_nn

    from sbi_jeffreys.nets.flows import reparameterized, zuko_coupling_nsf

    torch.manual_seed(0)
    theta, x = torch.randn(300, 2) * torch.tensor([2.0, 0.5]) + 1.0, torch.randn(300, 3)
    build = posterior_nn("nsf") if kind == "nsf" else zuko_coupling_nsf()
    return reparameterized(build(theta, x)).eval()


@pytest.mark.parametrize("kind", ["nsf", "zuko"])
def test_sampling_map_pushes_the_base_onto_the_flow(kind):
    from sbi_jeffreys.nets.flows import sampling_map

    flow = _sbi_flow(kind)
    c = torch.randn(2, 3)
    transform = sampling_map(flow, c)
    u = torch.randn(3, 2, 2)
    theta = transform(u)
    for i in range(3):
        for b in range(2):
            jac = torch.autograd.functional.jacobian(
                lambda v: transform(v.reshape(1, 1, 2).expand(1, 2, 2).contiguous())[0, b], u[i, b]
            )
            log_base = torch.distributions.Normal(0.0, 1.0).log_prob(u[i, b]).sum()
            expected = log_base - torch.linalg.slogdet(jac)[1]
            got = flow.log_prob(theta[i : i + 1, b : b + 1].detach(), c[b : b + 1])[0, 0]
            assert torch.allclose(got, expected, atol=1e-3), (got, expected)


def test_latent_mala_samples_the_tilted_proxy():
    from sbi_jeffreys.adapters.posterior import LangevinPosterior

    flow = _sbi_flow("nsf")
    energy = FlowTiltedEnergy(QuadraticTilt(torch.tensor([0.8, -0.4]), torch.tensor([[0.6, 0.0], [0.0, 0.2]])))
    prior = BoxUniform(-30 * torch.ones(2), 30 * torch.ones(2))
    x = torch.randn(2, 3)
    torch.manual_seed(2)
    exact = ImportancePosterior(flow, energy, prior, oversampling=16).sample_batched(
        (8_000,), x, show_progress_bars=False
    )
    mcmc = LangevinPosterior(
        flow, energy, prior, num_steps=100, step_size=0.3, method="mala", space="latent", target_acceptance=0.6
    )
    n = 1_500
    samples = mcmc.sample_batched((n,), x, show_progress_bars=False)
    assert samples.shape == (n, 2, 2)
    # the chains started at flow samples, whose mean is far from the tilted one: they must have moved
    start = flow.sample((4_000,), x)
    se = exact.std(0) / n**0.5
    assert ((start.mean(0) - exact.mean(0)).abs() > 10 * se).any()
    assert ((samples.mean(0) - exact.mean(0)).abs() < 4 * se + 0.01).all()
    assert torch.allclose(samples.std(0), exact.std(0), rtol=0.1)
    rate = mcmc.acceptance_rate
    assert rate is not None and 0.45 < float(rate.mean()) < 0.75  # adapted towards the target


def test_mala_step_size_adaptation_reaches_the_target_and_keeps_the_law():
    from sbi_jeffreys.sampling import mala

    target = torch.distributions.Normal(torch.tensor([0.0, 3.0]), torch.tensor([1.0, 0.1]))
    init = target.sample((4_000,)).unsqueeze(-1)  # (n, B=2, 1): two "conditions" of very different scales
    torch.manual_seed(0)
    out, rate = mala(lambda t: target.log_prob(t.squeeze(-1)), init, 400, 1.0, target_acceptance=0.574)
    assert torch.allclose(rate.mean(0), torch.full((2,), 0.574), atol=0.08)
    assert torch.allclose(out.squeeze(-1).mean(0), target.mean, atol=0.06)
    assert torch.allclose(out.squeeze(-1).std(0), target.stddev, rtol=0.06)


def test_latent_langevin_options_are_checked():
    from sbi_jeffreys.adapters.posterior import LangevinPosterior

    prior = BoxUniform(torch.zeros(1), torch.ones(1))
    with pytest.raises(ValueError, match="mala"):
        LangevinPosterior(StdNormal(1), Constant(0.0), prior, space="latent", method="ula")
    with pytest.raises(ValueError, match="space"):
        LangevinPosterior(StdNormal(1), Constant(0.0), prior, space="z")
    with pytest.raises(ValueError, match="target_acceptance"):
        LangevinPosterior(StdNormal(1), Constant(0.0), prior, method="mala", target_acceptance=1.5)
