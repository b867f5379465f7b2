r"""One step's Monte Carlo terms of the Lagrangian (eq. 11; Algorithm 3, lines 3-7).

.. math::
    \mathcal L = \ldots + \lambda_{fw}\,\mathrm{NLL}(p_\theta) + \lambda_{rv}\,\mathrm{KL}(p_\theta\|q_\psi)
      + \lambda_{prx}\,\mathrm{NLL}(q_\psi) + \lambda_u g_u + \lambda_\ell g_\ell

(written out in :mod:`sbi_jeffreys.objective.lagrangian`). :func:`step_terms` draws what its
estimators need and returns them as :class:`~sbi_jeffreys.objective.lagrangian.Terms`; the
surrogate of eqs. 15 and 18 is :func:`~sbi_jeffreys.objective.lagrangian.primal_surrogate`.

Design choices the paper leaves open (docs/design.md):

* ``num_rv_samples=None``: one draw of M samples per condition serves both the ζ estimate
  (eq. 12) and the reverse KL. Sampling the flow (an inverse pass) dominates a step's cost; the
  two estimates enter the surrogate as a sum, and the ζ path sees the samples detached, so θ gets
  no gradient from log ζ.
* ``num_rv_samples=K``: K separate reverse-KL samples per condition (JeffreysNPE: K = 1); the
  score-function estimator then takes its per-condition baseline from the separate ζ draw.
* A flow-tilted proxy (:class:`~sbi_jeffreys.nets.ebm.FlowTiltedEnergy`) returns the correction g;
  :func:`~sbi_jeffreys.objective.tilted.tilted_terms` turns it into the terms of f = log p̄ + g.
* The energy is evaluated on proposals, reverse-KL samples and data in one call (:func:`joint`).

References:
    Ben-Dov & Chamon (2025), Adaptive symmetrization of the KL divergence, arXiv:2511.11159.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from sbi_jeffreys.nets.ebm import is_flow_tilted
from sbi_jeffreys.objective import Terms, log_partition, tilted_terms


def joint(fn: Callable[[Tensor, Tensor | None], Tensor], parts: list[Tensor], context: Tensor | None) -> list[Tensor]:
    """``[fn(p, context) for p in parts]`` in one call of ``fn``: the same values (the network
    acts on each point alone) for a fraction of the kernel launches, which is what a step of
    these small models costs on a GPU. Parts are ``(S_i, C, d)``; without a condition every
    point is pooled along one axis.

    Only for networks that are stateless within a step: the flows, and the EBMs since their
    spectral norm moves once per step (:func:`~sbi_jeffreys.nets.ebm.refresh_spectral_norm`)."""
    if context is None:
        flat = torch.cat([p.reshape(1, -1, p.shape[-1]) for p in parts], 1)
        out = fn(flat, None)[0].split([p.shape[:-1].numel() for p in parts])
        return [o.reshape(p.shape[:-1]) for o, p in zip(out, parts)]
    return list(fn(torch.cat(parts, 0), context).split([p.shape[0] for p in parts], 0))


def step_terms(
    flow: Any,
    energy: nn.Module,
    inputs: Tensor,
    context: Tensor | None,
    num_zeta_samples: int,
    num_rv_samples: int | None,
    reparameterized: bool,
    zeta_draw: tuple[Tensor, Tensor] | None = None,
) -> Terms:
    """The terms of eq. 11 for one batch ``inputs (N, d)`` with conditions ``context (N, k)``
    (or ``None``); ``zeta_draw`` is a given ``(samples, log_prob)`` proposal draw (D.3: refreshed
    every k steps by the caller), else M fresh samples are drawn. See the module docstring."""
    tilted = is_flow_tilted(energy)  # f = log p_bar + g: the energy returns g (objective.tilted)
    x = inputs.unsqueeze(0)
    if num_rv_samples is None and zeta_draw is None:
        if reparameterized:
            y, logp_y = flow.sample_and_log_prob((num_zeta_samples,), context)
            logp_x = flow.log_prob(x, context)
            # the zeta path sees the samples detached: theta gets no gradient from log zeta
            f_y, f_z, f_x = joint(energy, [y, y.detach(), x], context)
            if tilted:
                return tilted_terms(logp_x[0], f_x[0], logp_y, f_y, f_z, True)
            return Terms(logp_x[0], f_x[0], logp_y, f_y, log_partition(f_z, logp_y.detach()), True)
        with torch.no_grad():
            y = flow.sample_and_log_prob((num_zeta_samples,), context)[0]
        logp_y, logp_x = joint(flow.log_prob, [y, x], context)
        f_y, f_x = joint(energy, [y, x], context)
        if tilted:
            return tilted_terms(logp_x[0], f_x[0], logp_y, f_y, f_y, False)
        return Terms(logp_x[0], f_x[0], logp_y, f_y, log_partition(f_y, logp_y.detach()), False)
    if zeta_draw is None:
        with torch.no_grad():
            zeta_draw = flow.sample_and_log_prob((num_zeta_samples,), context)
    y_z, logp_z = zeta_draw
    k = num_rv_samples or (inputs.shape[0] if context is None else 1)
    if reparameterized:
        y, logp_y = flow.sample_and_log_prob((k,), context)
        logp_x = flow.log_prob(x, context)
    else:
        with torch.no_grad():
            y = flow.sample_and_log_prob((k,), context)[0]
        logp_y, logp_x = joint(flow.log_prob, [y, x], context)
    f_z, f_y, f_x = joint(energy, [y_z, y, x], context)
    if tilted:
        return tilted_terms(logp_x[0], f_x[0], logp_y, f_y, f_z, reparameterized, separate_zeta_draw=True)
    # per-condition score-function baseline from the separate zeta draw (independent of y)
    baseline = None if reparameterized else (logp_z - f_z).detach().mean(0)
    return Terms(logp_x[0], f_x[0], logp_y, f_y, log_partition(f_z, logp_z), reparameterized, baseline)
