r"""The penalty problem (P-W) of the paper's Section 4 with fixed weights:

.. math::
    \min_{\theta,\psi}\; w_{fw}\,\mathrm{KL}(\pi\|p_\theta) + w_{rv}\,\mathrm{KL}(p_\theta\|q_\psi)
      + w_{prx}\,\mathrm{KL}(\pi\|q_\psi)

(with the NLLs for the forward terms). It is the engine with its multipliers frozen at the
weights (``JeffreysConfig(fixed_weights=...)``): no ascent, no ζ constraint, no B.7 shift, so the
same surrogate gradients (eqs. 15, 18) minimize the weighted sum. Fig. 2 compares 25 weight
configurations w_rv ("w_back"), w_fw ("w_for") ∈ {0.2, 0.5, 1, 2, 5} with the dual (D.1).

References:
    Ben-Dov & Chamon (2025), Adaptive symmetrization of the KL divergence, arXiv:2511.11159, eq. (P-W).

>>> est = PenaltyDensityEstimator(2, w_fw=0.5, w_rv=2.0, seed=0)
>>> est.config.fixed_weights
(0.5, 2.0, 1.0)
"""

from __future__ import annotations

from sbi_jeffreys.adapters.density import JeffreysDensityEstimator


class PenaltyDensityEstimator(JeffreysDensityEstimator):
    """(P-W): :class:`~sbi_jeffreys.adapters.density.JeffreysDensityEstimator` with fixed weights
    ``(w_fw, w_rv, w_prx)`` in place of the multipliers; every other argument is the same."""

    def __init__(self, features: int, *, w_fw: float = 1.0, w_rv: float = 1.0, w_prx: float = 1.0, **kwargs):
        if "fixed_weights" in kwargs:
            raise TypeError("Pass the weights as w_fw, w_rv, w_prx.")
        super().__init__(features, fixed_weights=(w_fw, w_rv, w_prx), **kwargs)
