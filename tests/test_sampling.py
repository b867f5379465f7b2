r"""Tests for the Langevin samplers (paper Eq. (8)) and MALA."""

import math

import pytest
import torch
from torch import nn

from sbi_jeffreys.sampling import langevin, mala

MEAN = torch.tensor([1.0, -2.0])
COV = torch.tensor([[1.0, 0.5], [0.5, 2.0]])
PRECISION = torch.linalg.inv(COV)


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor = MEAN) -> torch.Tensor:
    d = x - mean
    return -0.5 * torch.einsum("...i,ij,...j->...", d, PRECISION, d)


def moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(dim=0), x.T.cov()


def test_ula_gaussian():
    g = torch.Generator().manual_seed(0)
    init = torch.randn(4000, 2, generator=g)
    x = langevin(gaussian_log_density, init, num_steps=2000, step_size=1e-2, generator=g)
    assert x.shape == init.shape and not x.requires_grad
    mean, cov = moments(x)
    assert torch.allclose(mean, MEAN, atol=0.1)
    assert torch.allclose(cov, COV, atol=0.15)


def test_mala_gaussian():
    g = torch.Generator().manual_seed(1)
    init = torch.randn(4000, 2, generator=g)
    x, rate = mala(gaussian_log_density, init, num_steps=500, step_size=0.3, generator=g)
    assert x.shape == init.shape and rate.shape == (4000,)
    mean, cov = moments(x)
    assert torch.allclose(mean, MEAN, atol=0.1)
    assert torch.allclose(cov, COV, atol=0.15)
    assert ((rate > 0) & (rate < 1)).all()
    assert 0.5 < rate.mean() < 0.99


def test_mala_corrects_large_steps():
    # With s = 1, ULA overestimates the variance (Σ (I - s Σ^{-1} / 2)^{-1}); MALA does not.
    g = torch.Generator().manual_seed(2)
    init = MEAN + torch.randn(4000, 2, generator=g)
    x, rate = mala(gaussian_log_density, init, num_steps=300, step_size=1.0, generator=g)
    assert torch.allclose(moments(x)[1], COV, atol=0.15)
    assert rate.mean() < 0.9


@pytest.mark.parametrize("sampler", ["langevin", "mala"])
def test_batched_conditions(sampler):
    # (chains, conditions, d): each condition is its own target.
    means = torch.tensor([[0.0, 0.0], [3.0, -1.0], [-2.0, 5.0]])

    def log_density(x):
        assert x.shape == (1000, 3, 2)
        return gaussian_log_density(x, means)

    g = torch.Generator().manual_seed(3)
    init = torch.randn(1000, 3, 2, generator=g)
    if sampler == "langevin":
        x = langevin(log_density, init, num_steps=1000, step_size=2e-2, generator=g)
    else:
        x, rate = mala(log_density, init, num_steps=300, step_size=0.3, generator=g)
        assert rate.shape == (1000, 3)
    assert x.shape == (1000, 3, 2)
    assert torch.allclose(x.mean(dim=0), means, atol=0.15)


def truncated_normal_mean(m: float, s: float, low: float, high: float) -> float:
    pdf = lambda t: math.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda t: 0.5 * (1 + math.erf(t / math.sqrt(2)))  # noqa: E731
    a, b = (low - m) / s, (high - m) / s
    return m + s * (pdf(a) - pdf(b)) / (cdf(b) - cdf(a))


@pytest.mark.parametrize("sampler", ["langevin", "mala"])
def test_bounds(sampler):
    # N((0.9, 0.1), 0.5^2 I) restricted to [0, 1]^2: much mass near the walls.
    center, std = torch.tensor([0.9, 0.1]), 0.5
    bounds = (torch.zeros(2), torch.ones(2))

    def log_density(x):
        assert ((x >= 0) & (x <= 1)).all()  # never evaluated outside the support
        return -0.5 * ((x - center) / std).square().sum(dim=-1)

    g = torch.Generator().manual_seed(4)
    init = 2 * torch.rand(4000, 2, generator=g) - 0.5  # partly outside the box
    if sampler == "langevin":
        x = langevin(log_density, init, num_steps=1000, step_size=2e-3, bounds=bounds, generator=g)
    else:
        x, rate = mala(log_density, init, num_steps=300, step_size=2e-2, bounds=bounds, generator=g)
        assert 0.3 < rate.mean() < 1
    assert ((x >= 0) & (x <= 1)).all()
    on_edge = ((x == 0) | (x == 1)).any(dim=-1).float().mean()
    assert on_edge < 0.05
    expected = torch.tensor([truncated_normal_mean(m, std, 0.0, 1.0) for m in center.tolist()])
    assert torch.allclose(x.mean(dim=0), expected, atol=0.03)


def test_invalid_bounds():
    with pytest.raises(ValueError):
        langevin(gaussian_log_density, torch.zeros(3, 2), 1, bounds=(torch.ones(2), torch.zeros(2)))


@pytest.mark.parametrize("sampler", [langevin, mala])
def test_no_grad_accumulates(sampler):
    net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))

    def log_density(x):
        return -0.5 * x.square().sum(dim=-1) + net(x).squeeze(-1)

    with torch.no_grad():  # the caller's context must not break the gradients
        out = sampler(log_density, torch.randn(64, 2), 20, 1e-2)
    x = out[0] if isinstance(out, tuple) else out
    assert torch.isfinite(x).all() and not x.requires_grad
    assert all(p.grad is None for p in net.parameters())

    # Same outside no_grad, where the parameters' graph is live.
    out = sampler(log_density, torch.randn(64, 2), 20, 1e-2)
    assert all(p.grad is None for p in net.parameters())


def test_progress_and_determinism():
    init = torch.randn(10, 2)
    a = langevin(gaussian_log_density, init, 5, 1e-2, generator=torch.Generator().manual_seed(5), show_progress=True)
    b = langevin(gaussian_log_density, init, 5, 1e-2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, init)
