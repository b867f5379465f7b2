r"""Langevin samplers for energy-based models (paper Section 2.2, Eq. (8)).

Both samplers target an unnormalised density :math:`q(x) \propto \exp \log q(x)`
given as a callable ``log_density`` that maps a tensor of shape :math:`(*, D)` to
:math:`(*,)`. Every leading index (e.g. chains x conditions) is an independent
chain, so that one call samples many chains of many posteriors :math:`q(\theta \mid x)`
at once. Gradients :math:`\nabla_x \log q(x)` are taken by :func:`torch.autograd.grad`
with respect to the inputs only, so the parameters of a network inside
``log_density`` never accumulate ``.grad``.

With ``bounds = (low, high)``, the chains stay in the box :math:`[low, high]`
(e.g. the support of a box prior):

* :func:`langevin` reflects the steps at the walls; as :math:`s \to 0` this is
  the reflected Langevin diffusion, whose stationary law is the target
  restricted to the box (no mass piles up on the walls, unlike clamping);
* :func:`mala` rejects proposals outside the box, where the target is zero.
"""

from __future__ import annotations

__all__ = ["langevin", "mala"]

import math
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

LogDensity = Callable[[Tensor], Tensor]


def _value_and_grad(log_density: LogDensity, x: Tensor) -> tuple[Tensor, Tensor]:
    r"""Returns :math:`\log q(x)` and :math:`\nabla_x \log q(x)`, both detached."""
    with torch.enable_grad():  # the caller may sample under torch.no_grad()
        x = x.detach().requires_grad_(True)
        log_q = log_density(x)
        # Rows are independent chains, so the gradient of the sum is the per-chain gradient.
        (grad,) = torch.autograd.grad(log_q.sum(), x)
    return log_q.detach(), grad


def _check_bounds(bounds: tuple[Tensor, Tensor] | None, x: Tensor) -> tuple[Tensor, Tensor] | None:
    if bounds is None:
        return None
    low, high = (torch.as_tensor(b, dtype=x.dtype, device=x.device) for b in bounds)
    if not (torch.isfinite(low).all() and torch.isfinite(high).all() and (low < high).all()):
        raise ValueError("bounds must be finite with low < high")
    return low, high


def _reflect(x: Tensor, low: Tensor, high: Tensor) -> Tensor:
    r"""Folds :math:`x` into :math:`[low, high]` by (repeated) mirror reflection at the walls.

    The fold :math:`y \mapsto |((y - low) \bmod 2w) - w|` with :math:`w = high - low`
    handles any number of reflections in one step; the clamp only guards rounding.
    """
    width = high - low
    y = torch.remainder(x - low, 2 * width)
    y = torch.where(y > width, 2 * width - y, y)
    return torch.clamp(low + y, low, high)


def _noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def langevin(
    log_density: LogDensity,
    init: Tensor,
    num_steps: int = 2000,
    step_size: float = 1e-4,
    *,
    bounds: tuple[Tensor, Tensor] | None = None,
    generator: torch.Generator | None = None,
    show_progress: bool = False,
) -> Tensor:
    r"""Runs the unadjusted Langevin algorithm (ULA), paper Eq. (8).

    .. math:: x_k = x_{k-1} + s \nabla_x \log q(x_{k-1}) + \sqrt{2 s} \, z_{k-1},
        \quad z_{k-1} \sim \mathcal{N}(0, I)

    The chain is biased by :math:`O(s)` (there is no Metropolis correction). The
    defaults (2000 steps of size :math:`10^{-4}`, initialised with samples of
    :math:`p_\theta`) are those of the paper's Appendix D.4.

    Arguments:
        log_density: The unnormalised log density :math:`\log q`, mapping
            :math:`(*, D)` to :math:`(*,)`.
        init: The initial states :math:`x_0`, with shape :math:`(*, D)`.
        num_steps: The number of steps :math:`K`.
        step_size: The step size :math:`s`.
        bounds: Optional box ``(low, high)``, broadcastable to :math:`(D,)`.
            Every state is reflected into the box, so all samples lie inside;
            ``init`` is folded into it too.
        generator: The random generator of the noise, on the device of ``init``.
        show_progress: Whether to display a progress bar.

    Returns:
        The final states :math:`x_K`, detached, with the shape of ``init``.
    """
    x = init.detach().clone()
    box = _check_bounds(bounds, x)
    if box is not None:
        x = _reflect(x, *box)
    noise_scale = math.sqrt(2 * step_size)

    for _ in tqdm(range(num_steps), disable=not show_progress, desc="Langevin"):
        _, grad = _value_and_grad(log_density, x)
        x = x + step_size * grad + noise_scale * _noise(x, generator)
        if box is not None:
            x = _reflect(x, *box)

    return x


def mala(
    log_density: LogDensity,
    init: Tensor,
    num_steps: int = 2000,
    step_size: float | Tensor = 1e-4,
    *,
    bounds: tuple[Tensor, Tensor] | None = None,
    generator: torch.Generator | None = None,
    show_progress: bool = False,
    target_acceptance: float | None = None,
    adapt_steps: int | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Runs the Metropolis-adjusted Langevin algorithm (MALA).

    Each chain proposes the Langevin step of Eq. (8),
    :math:`y = x + s \nabla \log q(x) + \sqrt{2 s} z`, i.e. a draw of
    :math:`g(y \mid x) = \mathcal{N}(y \mid x + s \nabla \log q(x), 2 s I)`, and
    accepts it with probability

    .. math:: \alpha(x, y) = \min \left( 1, \frac{q(y) \, g(x \mid y)}{q(x) \, g(y \mid x)} \right),
        \quad \log g(y \mid x) = -\frac{\| y - x - s \nabla \log q(x) \|^2}{4 s} + \text{const}.

    The chain is exactly invariant for :math:`q`, whatever :math:`s`.

    Arguments:
        log_density: The unnormalised log density :math:`\log q`, mapping
            :math:`(*, D)` to :math:`(*,)`.
        init: The initial states, with shape :math:`(*, D)`.
        num_steps: The number of steps.
        step_size: The step size :math:`s`.
        bounds: Optional box ``(low, high)``, broadcastable to :math:`(D,)`.
            Proposals outside it are rejected (the target is zero there) and
            ``log_density`` is never evaluated outside it; ``init`` is clamped into it.
        generator: The random generator of the proposals and acceptance draws,
            on the device of ``init``.
        show_progress: Whether to display a progress bar.
        target_acceptance: If given, the step size adapts during the first
            ``adapt_steps`` steps (default: half of them) by the Robbins-Monro rule
            :math:`\log s \mathrel{+}= (\bar a - a^*)/\sqrt{k}`, one step size per
            index of ``init.shape[1:-1]`` (e.g. per condition for chains
            ``(n, B, D)``), :math:`\bar a` the mean acceptance over dim 0; then it
            is frozen, so the remaining steps leave :math:`q` invariant. The
            returned acceptance rates count the frozen steps only.

    Returns:
        The final states, detached, with the shape of ``init``, and the
        acceptance rate of each chain, with shape ``init.shape[:-1]``.
    """
    x = init.detach().clone()
    box = _check_bounds(bounds, x)
    if box is not None:
        x = torch.clamp(x, *box)
    target = 0.0 if target_acceptance is None else float(target_acceptance)
    adapt = 0 if target_acceptance is None else (num_steps // 2 if adapt_steps is None else int(adapt_steps))
    # per-"condition" step sizes (init.shape[1:-1]) broadcast over the chains and the coordinates
    shape = (*x.shape[1:-1], 1) if x.ndim > 1 else (1,)
    log_s = torch.as_tensor(step_size, dtype=x.dtype, device=x.device).log().expand(shape).clone()

    log_q, grad = _value_and_grad(log_density, x)
    accepted = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)

    for k in tqdm(range(num_steps), disable=not show_progress, desc="MALA"):
        s = log_s.exp()
        noise_scale = (2 * s).sqrt()
        y = x + s * grad + noise_scale * _noise(x, generator)
        if box is None:
            inside = torch.ones_like(accepted, dtype=torch.bool)
        else:
            inside = ((y >= box[0]) & (y <= box[1])).all(dim=-1)
            y = torch.clamp(y, *box)  # so that log_density only sees the support

        log_q_y, grad_y = _value_and_grad(log_density, y)
        log_g_fwd = -((y - x - s * grad).square() / (4 * s)).sum(dim=-1)
        log_g_bwd = -((x - y - s * grad_y).square() / (4 * s)).sum(dim=-1)
        log_alpha = log_q_y - log_q + log_g_bwd - log_g_fwd

        log_u = torch.rand(accepted.shape, generator=generator, dtype=x.dtype, device=x.device).log()
        accept = inside & (log_u < log_alpha)  # a NaN log_alpha is a rejection

        x = torch.where(accept.unsqueeze(-1), y, x)
        grad = torch.where(accept.unsqueeze(-1), grad_y, grad)
        log_q = torch.where(accept, log_q_y, log_q)
        if k < adapt:
            rate = accept.to(x.dtype).mean(0) if x.ndim > 1 else accept.to(x.dtype)
            log_s = log_s + (rate.reshape(shape) - target) / math.sqrt(k + 1)
        else:
            accepted += accept.to(x.dtype)

    return x, accepted / max(num_steps - adapt, 1)
