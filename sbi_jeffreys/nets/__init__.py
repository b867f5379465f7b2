"""Networks: zuko neural spline flows (the main model p_theta) and residual EBMs (the proxy q_psi)."""

from sbi_jeffreys.nets.ebm import (
    FiLMResidualEnergy,
    FlowTiltedEnergy,
    ResidualEnergy,
    SpectralLinear,
    Standardize,
    energy_nn,
    is_flow_tilted,
    proxy_log_density,
    refresh_spectral_norm,
)
from sbi_jeffreys.nets.flows import UnconditionalFlow, build_nsf

__all__ = [
    "FiLMResidualEnergy",
    "FlowTiltedEnergy",
    "ResidualEnergy",
    "SpectralLinear",
    "Standardize",
    "energy_nn",
    "is_flow_tilted",
    "proxy_log_density",
    "refresh_spectral_norm",
    "UnconditionalFlow",
    "build_nsf",
]
