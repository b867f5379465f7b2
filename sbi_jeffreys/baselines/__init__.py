"""Baselines the paper compares against: the NF trained by maximum likelihood
(:mod:`sbi_jeffreys.baselines.nf`, Fig. 3a, 4, 7)."""

from sbi_jeffreys.baselines.nf import NFDensityEstimator

__all__ = ["NFDensityEstimator"]
