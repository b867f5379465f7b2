r"""The terms of eq. 11 for the flow-tilted proxy :math:`f_\psi = \log p_{\bar\theta} + g_\psi`.

The paper lets the proxy be any family (Section 3.1). Take
:math:`q_\psi(\theta\mid x) = p_{\bar\theta}(\theta\mid x)\,e^{g_\psi(\theta,x)}/\zeta(x)` with
:math:`\bar\theta` the flow's parameters under stop-gradient, evaluated at :math:`\bar\theta = \theta`.
Each term of eq. 11 (B.1, B.6) becomes:

* **partition function** (eqs. 5, 12): :math:`\zeta(x) = \mathbb E_{p_\theta}[e^{g}]`; with
  :math:`y_j \sim p_\theta(\cdot\mid x)` the estimator of Algorithm 2 reduces to
  :math:`\log\hat\zeta = \operatorname{LSE}_j g(y_j) - \log M` (exact for a constant :math:`g`);
* **proxy NLL**: :math:`\frac1N\sum_i[-\log p_{\bar\theta}(\theta_i\mid x_i) - g(\theta_i, x_i) + \log\zeta(x_i)]`,
  whose ψ-gradient :math:`-\nabla g(\theta_i,x_i) + \sum_j \operatorname{softmax}(g)_j\nabla g(y_j)` is a
  contrastive (ratio-estimation) loss: :math:`g` rises on the data and falls where the flow
  puts mass the data do not support;
* **reverse KL**: :math:`\mathrm{KL}(p_\theta\|q_\psi)
  = \mathbb E_{p_\theta}[\log p_\theta - \log p_{\bar\theta} - g] + \log\zeta
  = -\mathbb E_{p_\theta}[g] + \log\zeta` at :math:`\bar\theta = \theta`. Its θ-gradient, with
  :math:`y = T_\theta(u)`, is :math:`-\mathbb E[\nabla_y g\,\partial_\theta T_\theta(u)]
  + \mathbb E[\partial_\theta\log p_\theta(y)|_{y}]`:
  the path terms of :math:`\log p_\theta` and :math:`\log p_{\bar\theta}` cancel, and the last
  expectation is 0 (the score's mean), so we drop it. The flow moves where the correction
  says it under-weights. The score-function form has advantage :math:`-g(y) - b_c`;
* **forward NLL** and the **ζ constraints**: unchanged.

:func:`tilted_terms` packs these into the same :class:`~sbi_jeffreys.objective.lagrangian.Terms`
as the free EBM, so :func:`~sbi_jeffreys.objective.lagrangian.primal_surrogate`,
:func:`~sbi_jeffreys.objective.lagrangian.constraint_slacks` and the multipliers are shared.

References:
    Ben-Dov & Chamon (2025), Adaptive symmetrization of the KL divergence, arXiv:2511.11159.
    Gao et al. (2020), Flow contrastive estimation of energy-based models, CVPR.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sbi_jeffreys.objective.lagrangian import Terms
from sbi_jeffreys.objective.partition import log_partition


def tilted_terms(
    logp_data: Tensor,
    g_data: Tensor,
    logp_rv: Tensor,
    g_rv: Tensor,
    g_zeta: Tensor,
    reparameterized: bool,
    separate_zeta_draw: bool = False,
) -> Terms:
    r"""The :class:`Terms` of eq. 11 for :math:`f = \log p_{\bar\theta} + g` (module docstring).

    Args:
        logp_data: :math:`\log p_\theta(\theta_i\mid x_i)`, ``(N,)``, with its θ-graph.
        g_data: :math:`g_\psi(\theta_i, x_i)`, ``(N,)``.
        logp_rv: :math:`\log p_\theta(y)` on the reverse-KL samples, ``(K, C)``; with θ-graph for
            the score-function form, unused (values only) for the reparameterized one.
        g_rv: :math:`g_\psi(y)`, ``(K, C)``; ``y`` carries θ-gradients when reparameterized.
        g_zeta: :math:`g_\psi` on the (detached) ζ-samples, ``(M, C)``.
        reparameterized: whether ``y`` is an rsample.
        separate_zeta_draw: the ζ-samples are independent of ``y``: then the score-function
            baseline is their per-condition mean advantage :math:`-\bar g_c`.

    >>> g = torch.full((16, 3), 0.7)  # a constant correction: log zeta is exactly 0.7
    >>> t = tilted_terms(torch.zeros(3), g[0], torch.zeros(16, 3), g, g, reparameterized=True)
    >>> t.log_zeta
    tensor([0.7000, 0.7000, 0.7000])
    """
    log_zeta = log_partition(g_zeta, torch.zeros_like(g_zeta))
    f_data = logp_data.detach() + g_data
    if reparameterized:
        # log p_theta(y) - log p_bar(y) is 0 in value and its gradient has mean 0: dropped
        return Terms(logp_data, f_data, torch.zeros_like(g_rv), g_rv, log_zeta, True)
    baseline = -g_zeta.detach().mean(0) if separate_zeta_draw else None
    return Terms(logp_data, f_data, logp_rv, logp_rv.detach() + g_rv, log_zeta, False, baseline)
