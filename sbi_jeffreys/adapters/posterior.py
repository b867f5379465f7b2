r"""Posterior that samples the proxy :math:`q_\psi(\theta \mid x) \propto e^{f_\psi(\theta, x)/T}`
by Langevin dynamics (eq. 8, App. D.4), for sbi users.

It is an sbi ``NeuralPosterior`` (so ``set_default_x``, ``map``, ``pairplot``, SBC and TARP
work), restricted to the prior's support: chains start from flow samples inside the
support and, for box priors, reflect at its faces; ``log_prob`` is the quasi-normalized
density :math:`f_\psi(\theta,x)/T - \log\hat\zeta(x)` with :math:`\hat\zeta` estimated by
importance sampling from :math:`p_\theta(\cdot\mid x)` over the support (eq. 12).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from sbi.inference.posteriors.base_posterior import NeuralPosterior
from sbi.inference.potentials.base_potential import BasePotential
from sbi.utils import mcmc_transform, within_support
from torch import Tensor, nn
from torch.distributions import Distribution

from sbi_jeffreys.sampling import langevin, mala


def box_bounds(prior: Distribution) -> tuple[Tensor, Tensor] | None:
    """The prior's support as a box ``(low, high)`` if it is one (e.g. ``BoxUniform``)."""
    support = getattr(prior, "support", None)
    while support is not None and hasattr(support, "base_constraint"):
        support = support.base_constraint
    low, high = getattr(support, "lower_bound", None), getattr(support, "upper_bound", None)
    if (
        isinstance(low, Tensor)
        and isinstance(high, Tensor)
        and torch.isfinite(low).all()
        and torch.isfinite(high).all()
    ):
        return low, high
    return None


class EnergyPotential(BasePotential):
    r"""sbi potential :math:`\theta \mapsto f_\psi(\theta, x_o)/T`, :math:`-\infty` outside the prior's support."""

    def __init__(self, energy: nn.Module, prior: Distribution, x_o: Tensor | None = None, device: str = "cpu"):
        super().__init__(prior, x_o, device)
        self.energy = energy

    def __call__(self, theta: Tensor, track_gradients: bool = True) -> Tensor:
        with torch.set_grad_enabled(track_gradients):
            f = self.energy(theta.unsqueeze(-2), self.x_o[:1]).squeeze(-1)
        inside = within_support(self.prior, theta)
        return torch.where(inside, f, torch.full_like(f, -math.inf))


class LangevinPosterior(NeuralPosterior):
    r"""Samples :math:`q_\psi(\theta\mid x)` with ULA (eq. 8) or MALA, initialised from :math:`p_\theta`.

    Args:
        flow: the trained conditional flow (sbi ``ConditionalDensityEstimator``).
        energy: the trained conditional EBM.
        prior: the prior; its support restricts sampling and ``log_prob``.
        num_steps, step_size: Langevin settings (D.4 defaults: 2,000 steps of 1e-4).
        method: ``"ula"`` (unadjusted, as in the paper) or ``"mala"`` (Metropolis-adjusted;
            the acceptance rate of the last call is kept in ``acceptance_rate``).
        num_zeta_samples: proposals per condition for the ``log_prob`` normaliser.
    """

    def __init__(
        self,
        flow: nn.Module,
        energy: nn.Module,
        prior: Distribution,
        num_steps: int = 2000,
        step_size: float = 1e-4,
        method: Literal["ula", "mala"] = "ula",
        num_zeta_samples: int = 1000,
        device: str | torch.device | None = None,
    ):
        if method not in ("ula", "mala"):
            raise ValueError(f"method must be 'ula' or 'mala', got {method!r}.")
        device = device if device is not None else next(flow.parameters()).device
        super().__init__(EnergyPotential(energy, prior, device=str(device)), mcmc_transform(prior), device=device)
        self.flow: Any = flow.eval()  # duck-typed sbi ConditionalDensityEstimator
        self.energy, self.prior = energy.eval(), prior
        self.num_steps, self.step_size, self.method = num_steps, step_size, method
        self.num_zeta_samples = num_zeta_samples
        self.acceptance_rate: Tensor | None = None
        self._bounds = box_bounds(prior)
        self._purpose = "It samples the Jeffreys EBM proxy by Langevin dynamics started at flow samples."

    # -------------------------------------------------------------- helpers
    def _condition(self, x: Tensor | None) -> Tensor:
        x = self._x_else_default_x(x)
        x = torch.as_tensor(x, dtype=torch.float32, device=self._device)
        x = x.reshape(1, -1) if x.ndim == 1 else x
        expected = self._condition_features()
        if x.ndim != 2 or (expected is not None and x.shape[1] != expected):
            raise ValueError(f"x must have shape (batch, {expected}) or ({expected},), got {tuple(x.shape)}.")
        return x

    def _condition_features(self) -> int | None:
        """Number of features of x: from the flow's ``condition_shape`` (sbi estimators), else
        from the FiLM EBM's z-scoring; ``None`` (unchecked) for other energies and flows."""
        shape = getattr(self.flow, "condition_shape", None)
        if shape is not None and len(shape) == 1:
            return int(shape[0])
        standardize = getattr(self.energy, "standardize_context", None)
        mean = getattr(standardize, "mean", None)
        return int(mean.shape[0]) if isinstance(mean, Tensor) else None

    def _init(self, n: int, x: Tensor) -> Tensor:
        """Flow samples ``(n, B, d)``, resampled until inside the prior's support."""
        with torch.no_grad():
            init = self.flow.sample((n,), x)
            for _ in range(100):
                bad = ~within_support(self.prior, init.reshape(-1, init.shape[-1])).reshape(init.shape[:-1])
                if not bad.any():
                    break
                init = torch.where(bad.unsqueeze(-1), self.flow.sample((n,), x), init)
        if self._bounds is not None:
            low, high = (b.to(init.device) for b in self._bounds)
            init = torch.minimum(torch.maximum(init, low), high)
        return init

    def _run(self, init: Tensor, x: Tensor, show_progress_bars: bool) -> Tensor:
        def log_density(theta: Tensor) -> Tensor:
            return self.energy(theta, x)

        bounds = None if self._bounds is None else (self._bounds[0].to(init.device), self._bounds[1].to(init.device))
        if self.method == "ula":
            return langevin(
                log_density, init, self.num_steps, self.step_size, bounds=bounds, show_progress=show_progress_bars
            )
        samples, rate = mala(
            log_density, init, self.num_steps, self.step_size, bounds=bounds, show_progress=show_progress_bars
        )
        self.acceptance_rate = rate
        return samples

    # -------------------------------------------------------------- sbi API
    def sample(self, sample_shape=torch.Size(), x: Tensor | None = None, show_progress_bars: bool = True) -> Tensor:
        """Samples of shape ``(*sample_shape, d)`` for one observation."""
        x = self._condition(x)
        if x.shape[0] != 1:
            raise ValueError(".sample() takes one observation; use .sample_batched() for several.")
        shape = torch.Size(sample_shape)
        samples = self._run(self._init(shape.numel(), x), x, show_progress_bars)
        return samples[:, 0].reshape(*shape, -1)

    def sample_batched(
        self, sample_shape, x: Tensor, max_sampling_batch_size: int = 10_000, show_progress_bars: bool = True
    ) -> Tensor:
        """Samples of shape ``(*sample_shape, B, d)``: the chains of all ``B`` conditions run
        together, at most ``max_sampling_batch_size`` chains at a time (raise it on a GPU)."""
        x = self._condition(x)
        shape = torch.Size(sample_shape)
        n = shape.numel()
        per_run = max(1, int(max_sampling_batch_size) // x.shape[0])
        chunks = [self._run(self._init(min(per_run, n - i), x), x, show_progress_bars) for i in range(0, n, per_run)]
        samples = torch.cat(chunks or [self._init(0, x)])
        return samples.reshape(*shape, x.shape[0], -1)

    @torch.no_grad()
    def log_zeta(self, x: Tensor) -> Tensor:
        r"""Per-condition :math:`\log\hat\zeta(x)` over the prior's support (eq. 12), ``(B,)``."""
        y, logp = self.flow.sample_and_log_prob((self.num_zeta_samples,), x)
        inside = within_support(self.prior, y.reshape(-1, y.shape[-1])).reshape(y.shape[:-1])
        w = torch.where(inside, self.energy(y, x) - logp, torch.full_like(logp, -math.inf))
        return torch.logsumexp(w, dim=0) - math.log(self.num_zeta_samples)

    def log_prob(self, theta: Tensor, x: Tensor | None = None, track_gradients: bool = False) -> Tensor:
        r"""Quasi-normalized :math:`f_\psi(\theta,x)/T - \log\hat\zeta(x)`; :math:`-\infty` outside the support."""
        x = self._condition(x)
        if x.shape[0] != 1:
            raise ValueError(".log_prob() takes one observation.")
        theta = torch.as_tensor(theta, dtype=torch.float32, device=self._device)
        theta2 = theta.reshape(-1, theta.shape[-1])
        with torch.set_grad_enabled(track_gradients):
            f = self.energy(theta2.unsqueeze(-2), x).squeeze(-1) - self.log_zeta(x)
        inside = within_support(self.prior, theta2)
        return torch.where(inside, f, torch.full_like(f, -math.inf)).reshape(theta.shape[:-1])

    def _calculate_map(
        self, *args, init_method: str | Tensor = "posterior", num_init_samples: int = 1_000, **kwargs
    ) -> Tensor:
        # start MAP ascent from flow samples: a Langevin run per init would be wasted work
        x = self._condition(None)
        self.potential_fn.set_x(x)
        if isinstance(init_method, str) and init_method == "posterior":
            init_method = self._init(num_init_samples, x)[:, 0]
        return super()._calculate_map(*args, init_method=init_method, num_init_samples=num_init_samples, **kwargs)
