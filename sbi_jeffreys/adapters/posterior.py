r"""Posteriors that sample the proxy :math:`q_\psi(\theta \mid x) \propto e^{f_\psi(\theta, x)/T}`, for sbi users.

Both are sbi ``NeuralPosterior`` s (so ``set_default_x``, ``map``, ``pairplot``, SBC and TARP
work), restricted to the prior's support, with ``log_prob`` the quasi-normalized density
:math:`f_\psi(\theta,x)/T - \log\hat\zeta(x)`, :math:`\hat\zeta` estimated by importance sampling
from :math:`p_\theta(\cdot\mid x)` over the support (eq. 12):

* :class:`LangevinPosterior`: ULA (eq. 8, App. D.4) or MALA chains started from flow samples
  inside the support, reflected at a box prior's faces;
* :class:`ImportancePosterior`: sampling-importance-resampling from :math:`p_\theta` with
  weights :math:`e^{f - \log p_\theta}` (:math:`e^{g}` for the flow-tilted proxy), with the
  effective sample size of each call.

The proxy's log-density comes from :func:`~sbi_jeffreys.nets.ebm.proxy_log_density`, so the
free EBM and the flow-tilted proxy :math:`\log p_\theta + g_\psi` are handled alike.

Module size (about 430 lines): two posterior families on one base class, each a few dozen
lines; the base holds everything sbi's ``NeuralPosterior`` API asks of both.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal

import torch
from sbi.inference.posteriors.base_posterior import NeuralPosterior
from sbi.inference.potentials.base_potential import BasePotential
from sbi.utils import mcmc_transform, within_support
from torch import Tensor, nn
from torch.distributions import Distribution

from sbi_jeffreys.nets.ebm import is_flow_tilted, proxy_log_density
from sbi_jeffreys.objective.partition import log_partition
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

    def __init__(
        self, energy: nn.Module, prior: Distribution, x_o: Tensor | None = None, device: str = "cpu", flow=None
    ):
        super().__init__(prior, x_o, device)
        self.energy, self.flow = energy, flow

    def __call__(self, theta: Tensor, track_gradients: bool = True) -> Tensor:
        with torch.set_grad_enabled(track_gradients):
            f = proxy_log_density(self.flow, self.energy, theta.unsqueeze(-2), self.x_o[:1]).squeeze(-1)
        inside = within_support(self.prior, theta)
        return torch.where(inside, f, torch.full_like(f, -math.inf))


class ProxyPosterior(NeuralPosterior):
    r"""What the proxy's posteriors share: conditions, flow initialisation inside the support,
    :math:`\log\hat\zeta` and ``log_prob``, MAP from flow samples. Subclasses implement ``_draw``.

    Args:
        flow: the trained conditional flow (sbi ``ConditionalDensityEstimator``).
        energy: the trained conditional EBM (free, or the correction of a flow-tilted proxy).
        prior: the prior; its support restricts sampling and ``log_prob``.
        num_zeta_samples: proposals per condition for the ``log_prob`` normaliser.
    """

    def __init__(
        self,
        flow: nn.Module,
        energy: nn.Module,
        prior: Distribution,
        num_zeta_samples: int = 1000,
        device: str | torch.device | None = None,
    ):
        if int(num_zeta_samples) < 1:
            raise ValueError(f"num_zeta_samples must be a positive integer, got {num_zeta_samples!r}.")
        device = device if device is not None else next(flow.parameters()).device
        potential = EnergyPotential(energy, prior, device=str(device), flow=flow)
        super().__init__(potential, mcmc_transform(prior, device=device), device=device)
        self.flow: Any = flow.eval()  # duck-typed sbi ConditionalDensityEstimator
        self.energy, self.prior = energy.eval(), prior
        self.num_zeta_samples = int(num_zeta_samples)
        self._bounds = box_bounds(prior)

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
        net = getattr(self.energy, "correction", self.energy)
        mean = getattr(getattr(net, "standardize_context", None), "mean", None)
        return int(mean.shape[0]) if isinstance(mean, Tensor) else None

    def _log_density(self, theta: Tensor, x: Tensor) -> Tensor:
        return proxy_log_density(self.flow, self.energy, theta, x)

    def _inside(self, theta: Tensor) -> Tensor:
        return within_support(self.prior, theta.reshape(-1, theta.shape[-1])).reshape(theta.shape[:-1])

    @torch.no_grad()
    def _draw_inside(self, draw: Callable[[], Tensor], to_theta: Callable[[Tensor], Tensor] = lambda t: t) -> Tensor:
        """``draw()`` ``(n, B, ·)``, with the entries whose ``to_theta`` image lies outside the
        prior's support drawn again (at most 100 times)."""
        sample = draw()
        for _ in range(100):
            bad = ~self._inside(to_theta(sample))
            if not bad.any():
                break
            sample = torch.where(bad.unsqueeze(-1), draw(), sample)
        return sample

    def _init(self, n: int, x: Tensor) -> Tensor:
        """Flow samples ``(n, B, d)``, resampled until inside the prior's support."""
        init = self._draw_inside(lambda: self.flow.sample((n,), x))
        if self._bounds is not None:
            low, high = (b.to(init.device) for b in self._bounds)
            init = torch.minimum(torch.maximum(init, low), high)
        return init

    def _log_weights(self, y: Tensor, logp: Tensor | None, x: Tensor) -> Tensor:
        r"""Importance log-weights :math:`\log\tilde q(y) - \log p_\theta(y)` of flow samples,
        :math:`-\infty` outside the support: :math:`g_\psi(y)` for the flow-tilted proxy, else
        :math:`f_\psi(y)/T - \log p_\theta(y)`."""
        if is_flow_tilted(self.energy):
            w = self.energy(y, x)
        else:
            assert logp is not None, "a free energy's weights need the flow's log-density"
            w = self.energy(y, x) - logp
        return torch.where(self._inside(y), w, torch.full_like(w, -math.inf))

    def _draw(self, n: int, x: Tensor, show_progress_bars: bool) -> Tensor:
        raise NotImplementedError

    # -------------------------------------------------------------- sbi API
    def sample(self, sample_shape=torch.Size(), x: Tensor | None = None, show_progress_bars: bool = True) -> Tensor:
        """Samples of shape ``(*sample_shape, d)`` for one observation."""
        x = self._condition(x)
        if x.shape[0] != 1:
            raise ValueError(".sample() takes one observation; use .sample_batched() for several.")
        shape = torch.Size(sample_shape)
        samples = self._draw(shape.numel(), x, show_progress_bars)
        return samples[:, 0].reshape(*shape, -1)

    def sample_batched(
        self, sample_shape, x: Tensor, max_sampling_batch_size: int = 10_000, show_progress_bars: bool = True
    ) -> Tensor:
        """Samples of shape ``(*sample_shape, B, d)`` for ``B`` observations, all conditions
        together, at most ``max_sampling_batch_size`` samples (chains) at a time (raise it on a GPU)."""
        x = self._condition(x)
        shape = torch.Size(sample_shape)
        n = shape.numel()
        per_run = max(1, int(max_sampling_batch_size) // x.shape[0])
        chunks = [self._draw(min(per_run, n - i), x, show_progress_bars) for i in range(0, n, per_run)]
        samples = torch.cat(chunks or [self._init(0, x)])
        return samples.reshape(*shape, x.shape[0], -1)

    @torch.no_grad()
    def log_zeta(self, x: Tensor) -> Tensor:
        r"""Per-condition :math:`\log\hat\zeta(x)` over the prior's support (eq. 12), ``(B,)``."""
        return self._normalizers(x)[0]

    @torch.no_grad()
    def _normalizers(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""From one set of ``num_zeta_samples`` flow draws per condition: :math:`\log\hat\zeta(x)`,
        the effective sample size of the importance weights (a fraction) and
        :math:`\log\hat P_{p_\theta}(\text{support})`, each ``(B,)``."""
        y, logp = self.flow.sample_and_log_prob((self.num_zeta_samples,), x)
        w = self._log_weights(y, logp, x)  # f - log p, -inf outside the support
        zero = torch.zeros_like(w)
        ess = 1.0 / (torch.softmax(w, dim=0).pow(2).sum(0) * w.shape[0])
        inside = torch.where(torch.isfinite(w), 0.0, -math.inf)
        return log_partition(w, zero), ess, log_partition(inside, zero)

    def _falls_back(self, ess: Tensor) -> Tensor:
        """Whether a condition with this effective sample size is served by the flow instead."""
        return torch.zeros_like(ess, dtype=torch.bool)

    @torch.no_grad()
    def log_ratio(self, theta: Tensor, x: Tensor, chunk: int = 256) -> Tensor:
        r"""Paired :math:`\log q_\psi(\theta_i\mid x_i) - \log p_\theta(\theta_i\mid x_i)`, both
        restricted to the prior's support, for ``theta`` ``(N, d)`` inside it and ``x`` ``(N, ·)``:
        :math:`w(\theta_i) - \log\hat{\mathbb E}_{p}[e^{w}\,1_{\rm in}] + \log\hat{\mathbb E}_p[1_{\rm in}]`
        with ``num_zeta_samples`` flow draws per pair and :math:`w` the importance log-weight
        (:math:`g_\psi` for the flow-tilted proxy). Its mean over held-out pairs from the joint
        is the proxy's held-out log-likelihood gain over the flow: positive when :math:`q_\psi`
        fits better (:meth:`JeffreysNPE.proxy_gain`)."""
        theta = torch.as_tensor(theta, dtype=torch.float32, device=self._device)
        x = torch.as_tensor(x, dtype=torch.float32, device=self._device)
        if theta.ndim != 2 or x.ndim != 2 or theta.shape[0] != x.shape[0]:
            raise ValueError(f"theta (N, d) and x (N, ·) must pair up, got {tuple(theta.shape)} and {tuple(x.shape)}.")
        out = []
        for i in range(0, theta.shape[0], chunk):
            t, c = theta[i : i + chunk], x[i : i + chunk]
            y, logp = self.flow.sample_and_log_prob((self.num_zeta_samples,), c)  # (K, C, d)
            log_w = self._log_weights(y, logp, c)
            inside = torch.where(torch.isfinite(log_w), 0.0, -math.inf)
            logp_t = self.flow.log_prob(t.unsqueeze(0), c) if not is_flow_tilted(self.energy) else None
            w_t = self._log_weights(t.unsqueeze(0), logp_t, c)[0]
            zero = torch.zeros_like(log_w)
            out.append(w_t - log_partition(log_w, zero) + log_partition(inside, zero))
        return torch.cat(out)

    def log_prob(self, theta: Tensor, x: Tensor | None = None, track_gradients: bool = False) -> Tensor:
        r"""Quasi-normalized :math:`f_\psi(\theta,x)/T - \log\hat\zeta(x)`; :math:`-\infty` outside the
        support. Where the sampler serves the flow instead (``min_ess``), the flow's density
        renormalized to the support, so that ``log_prob`` and ``sample`` describe one distribution."""
        x = self._condition(x)
        if x.shape[0] != 1:
            raise ValueError(".log_prob() takes one observation.")
        theta = torch.as_tensor(theta, dtype=torch.float32, device=self._device)
        theta2 = theta.reshape(-1, theta.shape[-1])
        log_zeta, ess, log_inside = self._normalizers(x)
        with torch.set_grad_enabled(track_gradients):
            if bool(self._falls_back(ess).any()):
                f = self.flow.log_prob(theta2.unsqueeze(-2), x).squeeze(-1) - log_inside
            else:
                f = self._log_density(theta2.unsqueeze(-2), x).squeeze(-1) - log_zeta
        inside = within_support(self.prior, theta2)
        return torch.where(inside, f, torch.full_like(f, -math.inf)).reshape(theta.shape[:-1])

    def _calculate_map(
        self, *args, init_method: str | Tensor = "posterior", num_init_samples: int = 1_000, **kwargs
    ) -> Tensor:
        # start MAP ascent from flow samples: drawing from the proxy first would be wasted work
        x = self._condition(None)
        self.potential_fn.set_x(x)
        if isinstance(init_method, str) and init_method == "posterior":
            init_method = self._init(num_init_samples, x)[:, 0]
        return super()._calculate_map(*args, init_method=init_method, num_init_samples=num_init_samples, **kwargs)


class LangevinPosterior(ProxyPosterior):
    r"""Samples :math:`q_\psi(\theta\mid x)` with ULA (eq. 8) or MALA, initialised from :math:`p_\theta`.

    ``space="theta"`` (the paper) runs the chains on θ, reflected at a box prior's faces.
    ``space="latent"`` runs MALA on the flow's base noise :math:`u`, where the proxy pulls back
    to :math:`\mathcal N(u)\,e^{w(T_x(u))}` with :math:`w = f/T - \log p_\theta` the importance
    log-weight (:math:`g` for the flow-tilted proxy) and :math:`T_x` the flow's sampling map
    (:func:`~sbi_jeffreys.nets.flows.sampling_map`): a near-Gaussian target of unit scale
    whatever θ's units, so one adapted step size fits every task.

    Args:
        flow, energy, prior, num_zeta_samples, device: as :class:`ProxyPosterior`.
        num_steps, step_size: Langevin settings (D.4 defaults: 2,000 steps of 1e-4); in latent
            space the initial step size of the adaptation.
        method: ``"ula"`` (unadjusted, as in the paper) or ``"mala"`` (Metropolis-adjusted;
            the acceptance rate of the last call is kept in ``acceptance_rate``).
        space: ``"theta"`` or ``"latent"`` (MALA only).
        target_acceptance: adapt the step size (per condition, first half of the steps) towards
            this MALA acceptance rate; ``None`` keeps ``step_size`` fixed.
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
        space: Literal["theta", "latent"] = "theta",
        target_acceptance: float | None = None,
    ):
        if method not in ("ula", "mala"):
            raise ValueError(f"method must be 'ula' or 'mala', got {method!r}.")
        if space not in ("theta", "latent"):
            raise ValueError(f"space must be 'theta' or 'latent', got {space!r}.")
        if space == "latent" and method != "mala":
            raise ValueError("Latent-space sampling needs method='mala' (its support check is a rejection).")
        if target_acceptance is not None and not 0 < target_acceptance < 1:
            raise ValueError(f"target_acceptance must lie in (0, 1), got {target_acceptance!r}.")
        if not step_size > 0 or int(num_steps) < 0:
            raise ValueError(f"step_size must be positive and num_steps non-negative, got {step_size}, {num_steps}.")
        super().__init__(flow, energy, prior, num_zeta_samples, device)
        self.num_steps, self.step_size, self.method = int(num_steps), step_size, method
        self.space, self.target_acceptance = space, target_acceptance
        self.acceptance_rate: Tensor | None = None
        self._purpose = "It samples the Jeffreys proxy by Langevin dynamics started at flow samples."

    def _draw(self, n: int, x: Tensor, show_progress_bars: bool) -> Tensor:
        if self.space == "latent":
            return self._draw_latent(n, x, show_progress_bars)
        init = self._init(n, x)

        def log_density(theta: Tensor) -> Tensor:
            return self._log_density(theta, x)

        bounds = None if self._bounds is None else (self._bounds[0].to(init.device), self._bounds[1].to(init.device))
        if self.method == "ula":
            return langevin(
                log_density, init, self.num_steps, self.step_size, bounds=bounds, show_progress=show_progress_bars
            )
        samples, rate = mala(
            log_density,
            init,
            self.num_steps,
            self.step_size,
            bounds=bounds,
            show_progress=show_progress_bars,
            target_acceptance=self.target_acceptance,
        )
        self.acceptance_rate = rate
        return samples

    def _draw_latent(self, n: int, x: Tensor, show_progress_bars: bool) -> Tensor:
        from sbi_jeffreys.nets.flows import sampling_map

        transform = sampling_map(self.flow, x)
        tilted = is_flow_tilted(self.energy)

        def log_density(u: Tensor) -> Tensor:
            theta = transform(u)
            logp = None if tilted else self.flow.log_prob(theta, x)
            return -0.5 * u.pow(2).sum(-1) + self._log_weights(theta, logp, x)

        shape = (n, x.shape[0], *self.flow.input_shape)  # base noise whose image lies inside the support
        u = self._draw_inside(lambda: torch.randn(shape, device=x.device), transform)
        u, rate = mala(
            log_density,
            u,
            self.num_steps,
            self.step_size,
            show_progress=show_progress_bars,
            target_acceptance=self.target_acceptance,
        )
        self.acceptance_rate = rate
        with torch.no_grad():
            return transform(u)


class ImportancePosterior(ProxyPosterior):
    r"""Samples :math:`q_\psi(\theta\mid x)` by sampling-importance-resampling from :math:`p_\theta`:
    draw ``oversampling`` × n flow samples per condition, weight them by
    :math:`w = e^{f_\psi/T - \log p_\theta}` (:math:`e^{g_\psi}` for the flow-tilted proxy, 0 outside
    the prior's support) and resample n with replacement, in proportion to :math:`w`.

    Exact as ``oversampling`` → ∞ whenever :math:`q \ll p`; its quality is measured by the
    effective sample size :math:`(\sum w)^2/\sum w^2`, kept per condition as a fraction of the
    draws in ``effective_sample_size`` after each call (near 1: :math:`q \approx p`; near
    1/``oversampling`` or below: the resampled set has many duplicates, trust it less).
    With ``min_ess``, a condition whose effective sample size falls below it gets flow samples
    (inside the support) instead, flagged in ``fell_back``: a resampled set drawn from a few
    spiking weights is worse than the proposal it came from. ``log_prob`` follows the same rule,
    judged on its ``num_zeta_samples`` draws: below ``min_ess`` it is the flow's density on the support.

    >>> import torch
    >>> from sbi.utils import BoxUniform
    >>> from sbi_jeffreys.nets.ebm import FlowTiltedEnergy
    >>> class Gauss(torch.nn.Module):  # a toy "flow": N(0, I) whatever the condition
    ...     def log_prob(self, t, c): return torch.distributions.Normal(0., 1.).log_prob(t).sum(-1)
    ...     def sample(self, s, c): return torch.randn(*s, c.shape[0], 1)
    ...     def sample_and_log_prob(self, s, c): t = self.sample(s, c); return t, self.log_prob(t, c)
    >>> class Tilt(torch.nn.Module):  # g = theta: q = N(1, 1)
    ...     def forward(self, t, c): return t[..., 0]
    >>> torch.manual_seed(0)
    <torch._C.Generator object at ...>
    >>> prior = BoxUniform(-10 * torch.ones(1), 10 * torch.ones(1))
    >>> post = ImportancePosterior(Gauss(), FlowTiltedEnergy(Tilt()), prior, device="cpu")
    >>> round(post.sample((20_000,), x=torch.zeros(1, 1), show_progress_bars=False).mean().item(), 1)
    1.0
    """

    def __init__(
        self,
        flow: nn.Module,
        energy: nn.Module,
        prior: Distribution,
        oversampling: int = 16,
        num_zeta_samples: int = 1000,
        device: str | torch.device | None = None,
        min_ess: float | None = None,
    ):
        if int(oversampling) < 1:
            raise ValueError(f"oversampling must be a positive integer, got {oversampling!r}.")
        if min_ess is not None and not 0.0 <= min_ess <= 1.0:
            raise ValueError(f"min_ess must be a fraction in [0, 1] or None, got {min_ess!r}.")
        super().__init__(flow, energy, prior, num_zeta_samples, device)
        self.oversampling = int(oversampling)
        self.min_ess = min_ess
        self.effective_sample_size: Tensor | None = None
        self.fell_back: Tensor | None = None
        self._purpose = "It samples the Jeffreys proxy by importance resampling of flow samples."

    def _falls_back(self, ess: Tensor) -> Tensor:
        return ess < (self.min_ess or 0.0)  # never without min_ess

    @torch.no_grad()
    def _draw(self, n: int, x: Tensor, show_progress_bars: bool) -> Tensor:
        if n == 0:
            return self._init(0, x)
        y, logp = self.flow.sample_and_log_prob((n * self.oversampling,), x)  # (nk, B, d), (nk, B)
        log_w = self._log_weights(y, logp, x)
        if not torch.isfinite(log_w.max(0).values).all():
            raise RuntimeError("No flow sample fell inside the prior's support for some observation.")
        w = torch.softmax(log_w, dim=0)  # (nk, B)
        self.effective_sample_size = ess = 1.0 / (w.pow(2).sum(0) * w.shape[0])
        self.fell_back = self._falls_back(ess)
        if self.fell_back.any():  # degenerate weights: those conditions get the flow (inside the support)
            flat = torch.softmax(torch.where(torch.isfinite(log_w), 0.0, -math.inf), dim=0)
            w = torch.where(self.fell_back, flat, w)
        idx = torch.multinomial(w.T, n, replacement=True).T  # (n, B)
        return y.gather(0, idx.unsqueeze(-1).expand(-1, -1, y.shape[-1]))
