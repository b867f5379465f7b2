"""The mathematics of the paper, one function per equation (App. B)."""

from sbi_jeffreys.objective.dual import MULTIPLIERS, DualState
from sbi_jeffreys.objective.lagrangian import (
    Terms,
    constraint_slacks,
    lagrangian_value,
    nll_shift,
    primal_surrogate,
    relaxation,
    score_baseline,
    zeta_constraints,
)
from sbi_jeffreys.objective.partition import log_partition
from sbi_jeffreys.objective.tilted import tilted_terms

__all__ = [
    "DualState",
    "MULTIPLIERS",
    "Terms",
    "constraint_slacks",
    "lagrangian_value",
    "primal_surrogate",
    "relaxation",
    "nll_shift",
    "log_partition",
    "score_baseline",
    "tilted_terms",
    "zeta_constraints",
]
