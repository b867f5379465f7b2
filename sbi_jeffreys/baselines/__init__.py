"""Baselines the paper compares against: the NF trained by maximum likelihood
(:mod:`sbi_jeffreys.baselines.nf`, Fig. 3a, 4, 7) and the fixed-weight penalty problem (P-W)
(:mod:`sbi_jeffreys.baselines.penalty`, Fig. 2), WGAN-GP (:mod:`sbi_jeffreys.baselines.wgan`, Fig. 3b)."""

from sbi_jeffreys.baselines.nf import NFDensityEstimator
from sbi_jeffreys.baselines.penalty import PenaltyDensityEstimator
from sbi_jeffreys.baselines.wgan import WGANGPDensityEstimator

__all__ = ["NFDensityEstimator", "PenaltyDensityEstimator", "WGANGPDensityEstimator"]
