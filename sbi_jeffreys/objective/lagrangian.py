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
vanish. Writing out eq. 11 shows the paper's "log f_ψ" is f_ψ (docs/design.md).

The ζ constraint has two forms (:func:`zeta_constraints`): the paper's box on the batch
mean (B.6, ``"box"``) and a per-condition form (``"per_condition"``) that keeps every
condition's :math:`\log\zeta_c` near 0.
"""

from __future__ import annotations

import math
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
        rv_baseline: optional per-condition baseline ``(C,)`` for the score-function
            estimator, independent of the reverse-KL samples (e.g. the mean of
            :math:`\log p_\theta - f_\psi` over the condition's separate ζ-samples).
    """

    logp_data: Tensor
    f_data: Tensor
    logp_rv: Tensor
    f_rv: Tensor
    log_zeta: Tensor
    reparameterized: bool
    rv_baseline: Tensor | None = None

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
            "log_zeta_ms": t.log_zeta.pow(2).mean(),
        }


ZETA_CONSTRAINTS = ("box", "per_condition")


def zeta_constraints(zeta_mean: Tensor, log_zeta_ms: Tensor, eps_zeta: float, kind: str = "box") -> Tensor:
    r"""The two ζ constraint functions :math:`(g_u, g_\ell) \le 0` of the multipliers
    :math:`(\lambda_u, \lambda_\ell)`.

    * ``"box"`` (B.6 as printed): :math:`g_u = \bar\zeta - 1 - \epsilon_\zeta`,
      :math:`g_\ell = 1 - \bar\zeta`, with :math:`\bar\zeta = \frac1C\sum_c\zeta_c`.
    * ``"per_condition"``: B.6 intends every condition to be normalized,
      :math:`\zeta_c \in [1, 1+\epsilon_\zeta]`, i.e. :math:`\log\zeta_c \in [0, \tau]` with
      :math:`\tau = \log(1+\epsilon_\zeta)`. One multiplier per training condition is not
      affordable, and the batch mean cannot see offsets that cancel (or underflow: once
      :math:`\zeta_c \approx 0` its gradient vanishes while :math:`\lambda_\ell` grows without
      bound). We use the aggregate :math:`g_u = \frac1C\sum_c(\log\zeta_c)^2 - \tau^2`,
      which every feasible point of the per-condition box satisfies; its ψ-gradient
      :math:`\frac{2\lambda_u}{C}\sum_c\log\zeta_c\nabla_\psi\log\zeta_c` pulls each condition
      towards 0 in proportion to its own offset and does not vanish in log space. The form is
      two-sided, so :math:`g_\ell = 0` and :math:`\lambda_\ell` stays at its floor.

    Args:
        zeta_mean: :math:`\bar\zeta`, the batch mean of the per-condition ζ.
        log_zeta_ms: :math:`\frac1C\sum_c(\log\zeta_c)^2`.
        eps_zeta: :math:`\epsilon_\zeta`.
        kind: ``"box"`` or ``"per_condition"``.

    Returns:
        ``(2,)``: :math:`(g_u, g_\ell)`.

    >>> log_zeta = torch.tensor([0.0, 2.0, -2.0])  # two conditions off by 2 nats each
    >>> zeta_constraints(log_zeta.exp().mean(), log_zeta.pow(2).mean(), eps_zeta=1.0, kind="box")
    tensor([ 0.8415, -1.8415])
    >>> zeta_constraints(log_zeta.exp().mean(), log_zeta.pow(2).mean(), eps_zeta=1.0, kind="per_condition")
    tensor([2.1862, 0.0000])
    """
    if kind == "box":
        return torch.stack([zeta_mean - 1 - eps_zeta, 1 - zeta_mean])
    if kind == "per_condition":
        return torch.stack([log_zeta_ms - math.log1p(eps_zeta) ** 2, torch.zeros_like(log_zeta_ms)])
    raise ValueError(f"Unknown zeta constraint {kind!r}; use one of {ZETA_CONSTRAINTS}.")


def constraint_slacks(
    values: dict[str, Tensor], lam: Tensor, eps_zeta: float, negative_nll: bool, zeta_constraint: str = "box"
) -> Tensor:
    r"""Eq. 19: :math:`\nabla_\lambda\mathcal L` at the closed-form :math:`\epsilon, \delta`
    (eqs. 13, 20), ordered as :data:`~sbi_jeffreys.objective.dual.MULTIPLIERS`
    ``(fw, rv, prx, zeta_upper, zeta_lower)``.

    Fixes to the printed eq. 19 (docs/design.md): the proxy's slack uses :math:`f_\psi` on the
    *data*; the lower ζ multiplier is :math:`\lambda_\ell` (printed "λ_θ"); with B.7 the NLL
    slacks include :math:`+\delta^2`.
    """
    eps = relaxation(lam[:3])
    shift = nll_shift(lam[:3]) ** 2 if negative_nll else torch.zeros_like(eps)
    zeta = zeta_constraints(values["zeta"], values["log_zeta_ms"], eps_zeta, zeta_constraint)
    return torch.cat(
        [
            torch.stack(
                [values["nll_p"] - eps[0] + shift[0], values["kl"] - eps[1], values["nll_q"] - eps[2] + shift[2]]
            ),
            zeta,
        ]
    )


def primal_surrogate(
    t: Terms,
    lam: Tensor,
    kl_weight: float = 1.0,
    baseline: bool = True,
    zeta_constraint: str = "box",
    eps_zeta: float = 0.0,
) -> Tensor:
    r"""A scalar whose autograd gradients w.r.t. θ and ψ are :math:`\nabla_\theta\mathcal L`
    (eq. 18) and :math:`\nabla_\psi\mathcal L` (eq. 15), with the multipliers held fixed.

    * ψ: :math:`-\lambda_{prx}\bar f(x) - w\lambda_{rv}\bar f(y) + (\lambda_{prx}\overline{\log\zeta_{c_i}}
      + w\lambda_{rv}\overline{\log\zeta_c}) + \lambda_u g_u + \lambda_\ell g_\ell` with the ζ
      constraints of :func:`zeta_constraints`, where :math:`\nabla\log\hat\zeta` is the
      softmax-weighted form of eq. 14 (see :func:`log_partition`).
    * θ, score function (eqs. 16-17): :math:`w\lambda_{rv}\,\overline{(\mathrm{sg}[\log p - f] - b_c)\log p_\theta(y)}`.
      The baseline :math:`b_c` is per condition and independent of :math:`y`, hence unbiased
      (:math:`\mathbb E\nabla\log p_\theta = 0`): ``t.rv_baseline`` when given (e.g. from the
      condition's separate ζ-samples), else the leave-one-out mean over the other K - 1
      samples of the same condition, else none. Conditions are never pooled: each has its own
      offset :math:`\log\zeta_c`, which a pooled baseline would carry into the advantage.
      Reparameterized: :math:`w\lambda_{rv}\,\overline{\log p_\theta(y_\theta) - f_\psi(y_\theta)}`.
    * θ, forward term: :math:`-\lambda_{fw}\overline{\log p_\theta(x_i)}`.
    """
    lam = lam.detach()
    l_fw, l_rv, l_prx = lam[0], lam[1], lam[2]
    if t.reparameterized:
        rv = (t.logp_rv - t.f_rv).mean()
    else:
        advantage = (t.logp_rv - t.f_rv).detach()
        if baseline:
            advantage = advantage - score_baseline(advantage, t.rv_baseline)
        rv = (advantage * t.logp_rv - t.f_rv).mean()
    zeta = zeta_constraints(t.log_zeta.exp().mean(), t.log_zeta.pow(2).mean(), eps_zeta, zeta_constraint)
    return (
        -l_fw * t.logp_data.mean()
        + kl_weight * l_rv * (rv + t.log_zeta.mean())
        + l_prx * (-t.f_data + t.data_log_zeta()).mean()
        + (lam[3:] * zeta).sum()
    )


def score_baseline(advantage: Tensor, given: Tensor | None = None) -> Tensor:
    r"""The per-condition baseline :math:`b` subtracted from the advantage ``(K, C)`` of the
    score-function estimator: ``given`` ``(C,)`` if passed; else with ``K > 1`` the
    leave-one-out mean :math:`b_k = \frac1{K-1}\sum_{j\ne k} a_j` of the same condition (a mean
    that contains :math:`a_k` itself would shrink the gradient by :math:`(K-1)/K`); else 0."""
    if given is not None:
        return given.detach().expand_as(advantage)
    k = advantage.shape[0]
    if k > 1:
        return advantage - (advantage - advantage.mean(dim=0, keepdim=True)) * (k / (k - 1))
    return torch.zeros_like(advantage)


def lagrangian_value(
    t: Terms, lam: Tensor, eps_zeta: float, negative_nll: bool, kl_weight: float = 1.0, zeta_constraint: str = "box"
) -> Tensor:
    r"""The plug-in value of :math:`\mathcal L` (eq. 11 / PVI) at the closed-form ε, δ, as a
    differentiable function of the terms. Used to check the surrogates' gradients."""
    eps = relaxation(lam[:3])
    delta = nll_shift(lam[:3]) if negative_nll else torch.zeros_like(eps)
    nll_p = -t.logp_data.mean()
    kl = kl_weight * (t.logp_rv - t.f_rv + t.log_zeta).mean()
    nll_q = (-t.f_data + t.data_log_zeta()).mean()
    zeta = zeta_constraints(t.log_zeta.exp().mean(), t.log_zeta.pow(2).mean(), eps_zeta, zeta_constraint)
    sq = delta**2 if negative_nll else torch.zeros_like(eps)
    return (
        eps.pow(2).sum()
        - delta[0]
        - delta[2]
        + lam[0] * (nll_p - eps[0] + sq[0])
        + lam[1] * (kl - eps[1])
        + lam[2] * (nll_q - eps[2] + sq[2])
        + (lam[3:] * zeta).sum()
    )
