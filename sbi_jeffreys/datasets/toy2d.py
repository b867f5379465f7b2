r"""Two-dimensional toy distributions of the paper (Appendix D.1 and D.2).

Six distributions are provided, keyed by name in :data:`DATASETS`:

``gmm40``
    A 40-component Gaussian mixture with equal weights (Appendix D.1, after
    Midgley et al.). The centers :math:`m_k \sim \mathcal{U}([0, 1]^2)` are drawn
    once from the fixed seed :data:`GMM40_SEED`, so that the distribution is the
    same in every run whatever the sampling seed. Each component has standard
    deviation 0.05.
``ring8``
    Eight components equidistant on the unit circle, standard deviation 0.05,
    then standardised to zero mean and unit variance (Appendix D.2).
``grid25``
    A :math:`5 \times 5` grid of centers in :math:`[-1, 1]^2`, standard deviation
    0.05, then standardised to zero mean and unit variance (Appendix D.2).
``moons``
    :func:`sklearn.datasets.make_moons` with ``noise=0.05``. The paper does not
    state the noise level; 0.05 is our choice.
``spiral``
    :math:`t \sim \mathcal{U}(0, 10)` and :math:`x = (t \cos t, t \sin t) + \epsilon`,
    :math:`\epsilon \sim \mathcal{N}(0, 0.02^2 I)`.
``rings``
    Concentric rings: :math:`z \sim \mathcal{N}(0, I)`, :math:`x = r z / \|z\| + u`
    with :math:`r \in \{0.2, 0.6\}` equiprobable and
    :math:`u \sim \mathcal{U}(0, 0.1)^2` (the noise is not centred, as in the paper).

The standardisation of ``ring8`` and ``grid25`` is exact: for an equal-weight
mixture with means :math:`m_k` and isotropic std :math:`\sigma`, the mean is
:math:`\mu = \frac{1}{K} \sum_k m_k` and the per-coordinate variance is
:math:`v_j = \sigma^2 + \frac{1}{K} \sum_k (m_{kj} - \mu_j)^2`. The mixture is
mapped by :math:`x \mapsto (x - \mu) / \sqrt{v}`, which moves the means and
divides the component stds by :math:`\sqrt{v}` too.

The mixtures (``gmm40``, ``ring8``, ``grid25``) also have an exact log density,
see :func:`true_log_prob`.
"""

from __future__ import annotations

__all__ = [
    "DATASETS",
    "GMM40_SEED",
    "GaussianMixture",
    "Toy2D",
    "load_toy2d",
    "plot_range",
    "true_log_prob",
]

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

GMM40_SEED: int = 40
r"""Seed of the generator that draws the 40 centers of ``gmm40`` (fixed, never the sampling seed)."""


@dataclass(frozen=True)
class GaussianMixture:
    r"""Equal-weight mixture of axis-aligned Gaussians sharing one scale.

    .. math:: p(x) = \frac{1}{K} \sum_{k=1}^K \mathcal{N}(x \mid m_k, \operatorname{diag}(s^2))

    Arguments:
        means: The component means :math:`m_k`, with shape :math:`(K, D)`.
        scale: The per-coordinate component std :math:`s`, with shape :math:`(D,)`.
    """

    means: Tensor
    scale: Tensor

    @staticmethod
    def standardised(means: Tensor, std: float) -> GaussianMixture:
        r"""Builds the mixture of isotropic std ``std`` around ``means``, affinely
        mapped to exactly zero mean and unit variance per coordinate (see module doc)."""
        means = means.to(torch.float64)
        mu = means.mean(dim=0)
        var = std**2 + means.var(dim=0, unbiased=False)  # law of total variance
        sd = var.sqrt()
        return GaussianMixture((means - mu) / sd, std / sd)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        r"""Draws :math:`n` samples, with shape :math:`(n, D)`, in float64."""
        k = torch.randint(len(self.means), (n,), generator=generator)
        z = torch.randn(n, self.means.shape[-1], generator=generator, dtype=torch.float64)
        return self.means[k] + self.scale * z

    def log_prob(self, x: Tensor) -> Tensor:
        r"""Returns :math:`\log p(x)` for :math:`x` of shape :math:`(*, D)`, with shape :math:`(*,)`."""
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        means = self.means.to(x.device, dtype)
        scale = self.scale.to(x.device, dtype)
        z = (x.to(dtype).unsqueeze(-2) - means) / scale  # (*, K, D)
        log_n = -0.5 * z.square() - scale.log() - 0.5 * math.log(2 * math.pi)
        return torch.logsumexp(log_n.sum(dim=-1), dim=-1) - math.log(len(means))


@dataclass(frozen=True)
class Toy2D:
    r"""Specification of a 2D toy distribution.

    Arguments:
        sample: Maps a number of samples :math:`n` and a CPU generator to an
            :math:`(n, 2)` tensor.
        plot_range: The square region ``(xmin, xmax, ymin, ymax)`` of density maps.
        num_train: Default train-set size (paper's Appendix D).
        num_test: Default test-set size (paper's Appendix D).
        mixture: The exact Gaussian mixture, when the distribution is one.
    """

    sample: Callable[[int, torch.Generator], Tensor]
    plot_range: tuple[float, float, float, float]
    num_train: int = 1000
    num_test: int = 10_000
    mixture: GaussianMixture | None = None


def _gmm40() -> GaussianMixture:
    g = torch.Generator().manual_seed(GMM40_SEED)
    means = torch.rand(40, 2, generator=g, dtype=torch.float64)
    return GaussianMixture(means, torch.full((2,), 0.05, dtype=torch.float64))


def _ring8() -> GaussianMixture:
    angle = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    return GaussianMixture.standardised(torch.stack((angle.cos(), angle.sin()), dim=-1), 0.05)


def _grid25() -> GaussianMixture:
    ticks = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
    means = torch.cartesian_prod(ticks, ticks)
    return GaussianMixture.standardised(means, 0.05)


def _moons(n: int, generator: torch.Generator) -> Tensor:
    from sklearn.datasets import make_moons

    # sklearn wants an integer seed: derive it from the torch stream.
    seed = int(torch.randint(2**31 - 1, (), generator=generator))
    x, _ = make_moons(n_samples=n, noise=0.05, random_state=seed)
    return torch.from_numpy(x)


def _spiral(n: int, generator: torch.Generator) -> Tensor:
    t = 10 * torch.rand(n, generator=generator, dtype=torch.float64)
    x = torch.stack((t * t.cos(), t * t.sin()), dim=-1)
    return x + 0.02 * torch.randn(n, 2, generator=generator, dtype=torch.float64)


def _rings(n: int, generator: torch.Generator) -> Tensor:
    z = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    radius = torch.where(torch.rand(n, generator=generator) < 0.5, 0.2, 0.6).to(torch.float64)
    x = radius.unsqueeze(-1) * z / z.norm(dim=-1, keepdim=True)
    return x + 0.1 * torch.rand(n, 2, generator=generator, dtype=torch.float64)


def _mixture_spec(mixture: GaussianMixture, plot: tuple[float, float, float, float], **kwargs) -> Toy2D:
    return Toy2D(sample=mixture.sample, plot_range=plot, mixture=mixture, **kwargs)


DATASETS: dict[str, Toy2D] = {
    "gmm40": _mixture_spec(_gmm40(), (-0.25, 1.25, -0.25, 1.25), num_train=800),
    "ring8": _mixture_spec(_ring8(), (-2.0, 2.0, -2.0, 2.0)),
    "grid25": _mixture_spec(_grid25(), (-2.0, 2.0, -2.0, 2.0)),
    "moons": Toy2D(sample=_moons, plot_range=(-1.5, 2.5, -1.75, 2.25)),
    "spiral": Toy2D(sample=_spiral, plot_range=(-10.0, 7.0, -7.0, 10.0)),
    "rings": Toy2D(sample=_rings, plot_range=(-0.8, 0.9, -0.8, 0.9)),
}
r"""The toy distributions, by name."""


def _get(name: str) -> Toy2D:
    if name not in DATASETS:
        raise ValueError(f"unknown 2D dataset {name!r}, valid names are {sorted(DATASETS)}")
    return DATASETS[name]


def _generator(seed: int, stream: int) -> torch.Generator:
    # SeedSequence.spawn gives statistically independent child streams.
    child = np.random.SeedSequence(seed).spawn(stream + 1)[stream]
    return torch.Generator().manual_seed(int(child.generate_state(1, dtype=np.uint64)[0]))


def load_toy2d(
    name: str,
    num_train: int | None = None,
    num_test: int | None = None,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    r"""Draws a train and a test set of a 2D toy distribution.

    The two sets come from independent random streams derived from ``seed``, so
    that the same ``seed`` always gives the same sets and changing ``num_train``
    leaves the test set untouched.

    Arguments:
        name: One of :data:`DATASETS` (``gmm40``, ``ring8``, ``grid25``, ``moons``,
            ``spiral``, ``rings``).
        num_train: The train-set size. Defaults to 1000 (800 for ``gmm40``).
        num_test: The test-set size. Defaults to 10,000.
        seed: The sampling seed.

    Returns:
        The float32 train and test sets, with shapes :math:`(N_{train}, 2)` and
        :math:`(N_{test}, 2)`.

    Example:
        >>> train, test = load_toy2d("ring8", seed=0)
        >>> train.shape, test.shape
        (torch.Size([1000, 2]), torch.Size([10000, 2]))
    """
    spec = _get(name)
    num_train = spec.num_train if num_train is None else num_train
    num_test = spec.num_test if num_test is None else num_test
    train = spec.sample(num_train, _generator(seed, 0))
    test = spec.sample(num_test, _generator(seed, 1))
    return train.to(torch.float32), test.to(torch.float32)


def true_log_prob(name: str, x: Tensor) -> Tensor:
    r"""Returns the exact log density :math:`\log p(x)` of a mixture dataset.

    Arguments:
        name: ``gmm40``, ``ring8`` or ``grid25``.
        x: Points, with shape :math:`(*, 2)`.

    Returns:
        The log densities, with shape :math:`(*,)`, in the dtype of ``x``.

    Raises:
        NotImplementedError: For datasets without a closed-form density.
    """
    spec = _get(name)
    if spec.mixture is None:
        raise NotImplementedError(f"no closed-form density for {name!r}")
    return spec.mixture.log_prob(x)


def plot_range(name: str) -> tuple[float, float, float, float]:
    r"""Returns the square region ``(xmin, xmax, ymin, ymax)`` in which to draw
    the 64x64 density maps of a dataset (Appendix D.2)."""
    return _get(name).plot_range
