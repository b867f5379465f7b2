r"""The Lagrangian of eq. 11 (B.1), its B.6 conditional and B.7 negative-NLL forms.

Notation (multipliers are the entries of :class:`~sbi_jeffreys.objective.dual.DualState`):

.. math::
    \mathcal L = \epsilon_{fw}^2 - \delta_{fw} + \epsilon_{rv}^2 + \epsilon_{prx}^2 - \delta_{prx}
      + \lambda_{fw}\,[\mathrm{NLL}(p_\theta) - \epsilon_{fw} + \delta_{fw}^2]
      + \lambda_{rv}\,[w\,\mathrm{KL}(p_\theta\|q_\psi) - \epsilon_{rv}]
      + \lambda_{prx}\,[\mathrm{NLL}(q_\psi) - \epsilon_{prx} + \delta_{prx}^2]
      + \lambda_u\,[\bar\zeta - 1 - \epsilon_\zeta] + \lambda_\ell\,[1 - \bar\zeta]

with :math:`\mathrm{KL} = \frac1{KC}\sum [\log p_\theta(y) - f_\psi(y) + \log\zeta_c]`,
:math:`\mathrm{NLL}(q_\psi) = \frac1N\sum_i[-f_\psi(x_i) + \log\zeta_{c_i}]` (per-condition
:math:`\log\zeta`, B.6), :math:`\bar\zeta` the mean of the per-condition :math:`\zeta_c`, and
:math:`w = T` for the temperature-weighted KL of eq. 22 (else 1). Without B.7, the δ terms
vanish. Writing out eq. 11 shows the paper's "log f_ψ" is f_ψ (DESIGN §8).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def relaxation(lam: Tensor) -> Tensor:
    r"""Eq. 13: :math:`\partial_\epsilon(\epsilon^2 - \lambda\epsilon) = 0 \Rightarrow \epsilon = \lambda/2`."""
    return lam / 2


def nll_shift(lam: Tensor) -> Tensor:
    r"""Eq. 20: :math:`\partial_\delta(-\delta + \lambda\delta^2) = 0 \Rightarrow \delta = 1/(2\lambda)`."""
    return 1 / (2 * lam)


@dataclass
class Terms:
    r"""Everything one step evaluates, on the device.

    Attributes:
        logp_data: :math:`\log p_\theta(x_i)`, ``(N,)``, differentiable in θ.
        f_data: :math:`f_\psi(x_i)/T`, ``(N,)``, differentiable in ψ.
        logp_rv: :math:`\log p_\theta(y)` on reverse-KL samples, ``(K, C)``.
        f_rv: :math:`f_\psi(y)/T` on the same samples, ``(K, C)``.
        log_zeta: per-condition :math:`\log\hat\zeta_c`, ``(C,)`` (``C = 1`` unconditionally),
            differentiable in ψ only (eq. 12).
        reparameterized: whether ``y`` carries θ-gradients (rsample) or is a stop-gradient
            sample (score-function form of eqs. 16-18).
    """

    logp_data: Tensor
    f_data: Tensor
    logp_rv: Tensor
    f_rv: Tensor
    log_zeta: Tensor
    reparameterized: bool

    def data_log_zeta(self) -> Tensor:
        """log ζ of each data point's own condition (broadcasts for ``C = 1``)."""
        return self.log_zeta if self.log_zeta.numel() > 1 else self.log_zeta.expand_as(self.f_data)


def constraint_values(t: Terms, kl_weight: float = 1.0) -> dict[str, Tensor]:
    r"""The constraint functions of B.1/B.6 (detached): forward NLL, weighted reverse KL
    (eq. 22 with ``kl_weight = T``), proxy NLL and the mean partition function."""
    with torch.no_grad():
        return {
            "nll_p": -t.logp_data.mean(),
            "kl": kl_weight * (t.logp_rv - t.f_rv + t.log_zeta).mean(),
            "nll_q": (-t.f_data + t.data_log_zeta()).mean(),
            "zeta": t.log_zeta.exp().mean(),
            "log_zeta": t.log_zeta.mean(),
        }


def constraint_slacks(
    values: dict[str, Tensor], lam: Tensor, eps_zeta: float, negative_nll: bool
) -> Tensor:
    r"""Eq. 19: :math:`\nabla_\lambda\mathcal L` at the closed-form :math:`\epsilon, \delta`
    (eqs. 13, 20), ordered as :data:`~sbi_jeffreys.objective.dual.MULTIPLIERS`
    ``(fw, rv, prx, zeta_upper, zeta_lower)``.

    Fixes to the printed eq. 19 (DESIGN §8): the proxy's slack uses :math:`f_\psi` on the
    *data*; the lower ζ multiplier is :math:`\lambda_\ell` (printed "λ_θ"); with B.7 the NLL
    slacks include :math:`+\delta^2`.
    """
    eps = relaxation(lam[:3])
    shift = nll_shift(lam[:3]) ** 2 if negative_nll else torch.zeros_like(eps)
    return torch.stack([
        values["nll_p"] - eps[0] + shift[0],
        values["kl"] - eps[1],
        values["nll_q"] - eps[2] + shift[2],
        values["zeta"] - 1 - eps_zeta,
        1 - values["zeta"],
    ])


def primal_surrogate(t: Terms, lam: Tensor, kl_weight: float = 1.0, baseline: bool = True) -> Tensor:
    r"""A scalar whose autograd gradients w.r.t. θ and ψ are :math:`\nabla_\theta\mathcal L`
    (eq. 18) and :math:`\nabla_\psi\mathcal L` (eq. 15), with the multipliers held fixed.

    * ψ: :math:`-\lambda_{prx}\bar f(x) - w\lambda_{rv}\bar f(y) + (\lambda_{prx}\overline{\log\zeta_{c_i}}
      + w\lambda_{rv}\overline{\log\zeta_c}) + (\lambda_u - \lambda_\ell)\bar\zeta`, where
      :math:`\nabla\log\hat\zeta` is the softmax-weighted form of eq. 14 (see :func:`log_partition`).
    * θ, score function (eqs. 16-17): :math:`w\lambda_{rv}\,\overline{(\mathrm{sg}[\log p - f] - b)\log p_\theta(y)}`
      with the baseline :math:`b_i` the leave-one-out mean of :math:`\log p - f` over the other
      K - 1 samples of its condition (independent of :math:`y_i`, hence unbiased since
      :math:`\mathbb E\nabla\log p_\theta = 0`); with ``K = 1`` over the other conditions'
      samples, and none for a single sample. Reparameterized: :math:`w\lambda_{rv}\,\overline{\log p_\theta(y_\theta) - f_\psi(y_\theta)}`.
    * θ, forward term: :math:`-\lambda_{fw}\overline{\log p_\theta(x_i)}`.
    """
    lam = lam.detach()
    l_fw, l_rv, l_prx, l_u, l_l = lam.unbind()
    if t.reparameterized:
        rv = (t.logp_rv - t.f_rv).mean()
    else:
        advantage = (t.logp_rv - t.f_rv).detach()
        if baseline:
            # leave-one-out mean: b_i = mean_{j != i} a_j = a_i - n/(n-1) (a_i - mean a);
            # a baseline containing a_i itself would shrink the gradient by (n-1)/n
            n = t.logp_rv.shape[0]
            if n > 1:
                advantage = (advantage - advantage.mean(dim=0, keepdim=True)) * (n / (n - 1))
            elif advantage.numel() > 1:
                n = advantage.numel()
                advantage = (advantage - advantage.mean()) * (n / (n - 1))
        rv = (advantage * t.logp_rv - t.f_rv).mean()
    zeta = t.log_zeta.exp().mean()
    return (
        -l_fw * t.logp_data.mean()
        + kl_weight * l_rv * (rv + t.log_zeta.mean())
        + l_prx * (-t.f_data + t.data_log_zeta()).mean()
        + (l_u - l_l) * zeta
    )


def lagrangian_value(
    t: Terms, lam: Tensor, eps_zeta: float, negative_nll: bool, kl_weight: float = 1.0
) -> Tensor:
    r"""The plug-in value of :math:`\mathcal L` (eq. 11 / PVI) at the closed-form ε, δ, as a
    differentiable function of the terms. Used to check the surrogates' gradients."""
    eps = relaxation(lam[:3])
    delta = nll_shift(lam[:3]) if negative_nll else torch.zeros_like(eps)
    nll_p = -t.logp_data.mean()
    kl = kl_weight * (t.logp_rv - t.f_rv + t.log_zeta).mean()
    nll_q = (-t.f_data + t.data_log_zeta()).mean()
    zeta = t.log_zeta.exp().mean()
    sq = delta**2 if negative_nll else torch.zeros_like(eps)
    return (
        eps.pow(2).sum() - delta[0] - delta[2]
        + lam[0] * (nll_p - eps[0] + sq[0])
        + lam[1] * (kl - eps[1])
        + lam[2] * (nll_q - eps[2] + sq[2])
        + lam[3] * (zeta - 1 - eps_zeta)
        + lam[4] * (1 - zeta)
    )
