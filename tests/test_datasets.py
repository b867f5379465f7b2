r"""Tests for the 2D toy distributions (Appendix D.1/D.2)."""

import pytest
import torch

from sbi_jeffreys.datasets import DATASETS, load_toy2d, plot_range, true_log_prob

NAMES = ["gmm40", "ring8", "grid25", "moons", "spiral", "rings"]


def test_registry():
    assert sorted(DATASETS) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes(name):
    train, test = load_toy2d(name, seed=3)
    default_train = 800 if name == "gmm40" else 1000
    assert train.shape == (default_train, 2) and test.shape == (10_000, 2)
    assert train.dtype == test.dtype == torch.float32
    assert torch.isfinite(train).all() and torch.isfinite(test).all()

    train, test = load_toy2d(name, num_train=17, num_test=5)
    assert train.shape == (17, 2) and test.shape == (5, 2)

    xmin, xmax, ymin, ymax = plot_range(name)
    assert xmax - xmin == pytest.approx(ymax - ymin)  # square region
    inside = (test[:, 0] > xmin) & (test[:, 0] < xmax) & (test[:, 1] > ymin) & (test[:, 1] < ymax)
    assert inside.float().mean() > 0.999


@pytest.mark.parametrize("name", NAMES)
def test_determinism(name):
    a_train, a_test = load_toy2d(name, num_train=200, num_test=300, seed=1)
    b_train, b_test = load_toy2d(name, num_train=200, num_test=300, seed=1)
    c_train, c_test = load_toy2d(name, num_train=200, num_test=300, seed=2)
    assert torch.equal(a_train, b_train) and torch.equal(a_test, b_test)
    assert not torch.allclose(a_train, c_train) and not torch.allclose(a_test, c_test)
    # Train and test come from independent streams.
    assert not torch.allclose(a_train[:100], a_test[:100])
    # The test set does not depend on the train-set size.
    assert torch.equal(load_toy2d(name, num_train=50, num_test=300, seed=1)[1], a_test)


def test_gmm40_fixed_centers():
    means = DATASETS["gmm40"].mixture.means
    assert means.shape == (40, 2)
    assert ((means >= 0) & (means <= 1)).all()
    assert torch.allclose(DATASETS["gmm40"].mixture.scale, torch.tensor(0.05, dtype=torch.float64))


@pytest.mark.parametrize("name", ["ring8", "grid25"])
def test_standardised(name):
    x, _ = load_toy2d(name, num_train=100_000, num_test=1, seed=0)
    assert torch.allclose(x.mean(dim=0), torch.zeros(2), atol=0.02)
    assert torch.allclose(x.var(dim=0), torch.ones(2), atol=0.02)
    assert torch.allclose(x.T.cov()[0, 1], torch.tensor(0.0), atol=0.02)


@pytest.mark.parametrize("name", ["gmm40", "ring8", "grid25"])
def test_true_log_prob_normalised(name):
    xmin, xmax, ymin, ymax = plot_range(name)
    n = 400
    xs = torch.linspace(xmin - 0.2, xmax + 0.2, n, dtype=torch.float64)
    ys = torch.linspace(ymin - 0.2, ymax + 0.2, n, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), dim=-1)  # (n, n, 2)
    log_p = true_log_prob(name, grid)
    assert log_p.shape == (n, n) and log_p.dtype == torch.float64
    area = (xs[1] - xs[0]) * (ys[1] - ys[0])
    assert (log_p.exp().sum() * area).item() == pytest.approx(1.0, abs=1e-3)


def test_true_log_prob_matches_samples():
    # Samples should be far more likely under the true density than uniform points.
    _, test = load_toy2d("gmm40", num_test=2000)
    uniform = torch.rand(2000, 2, generator=torch.Generator().manual_seed(0))
    log_p = true_log_prob("gmm40", test)
    assert log_p.dtype == torch.float32
    assert log_p.mean() > true_log_prob("gmm40", uniform).mean() + 1.0


@pytest.mark.parametrize("name", ["moons", "spiral", "rings"])
def test_true_log_prob_unavailable(name):
    with pytest.raises(NotImplementedError):
        true_log_prob(name, torch.zeros(3, 2))


def test_unknown_name():
    with pytest.raises(ValueError, match="ring8"):
        load_toy2d("nope")
    with pytest.raises(ValueError):
        true_log_prob("nope", torch.zeros(1, 2))
    with pytest.raises(ValueError):
        plot_range("nope")
