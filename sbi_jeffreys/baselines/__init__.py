"""Baselines the paper compares against: the NF trained by maximum likelihood
(:mod:`sbi_jeffreys.baselines.nf`, Fig. 3a, 4, 7) and the fixed-weight penalty problem (P-W)
(:mod:`sbi_jeffreys.baselines.penalty`, Fig. 2)."""

from sbi_jeffreys.baselines.nf import NFDensityEstimator
from sbi_jeffreys.baselines.penalty import PenaltyDensityEstimator

__all__ = ["NFDensityEstimator", "PenaltyDensityEstimator"]
