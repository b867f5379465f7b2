"""Networks: zuko neural spline flows (the main model p_theta) and residual EBMs (the proxy q_psi)."""

from sbi_jeffreys.nets.ebm import (
    FiLMResidualEnergy,
    ResidualEnergy,
    SpectralLinear,
    Standardize,
    energy_nn,
    refresh_spectral_norm,
)
from sbi_jeffreys.nets.flows import UnconditionalFlow, build_nsf

__all__ = [
    "FiLMResidualEnergy",
    "ResidualEnergy",
    "SpectralLinear",
    "Standardize",
    "energy_nn",
    "refresh_spectral_norm",
    "UnconditionalFlow",
    "build_nsf",
]
