"""Networks: zuko neural spline flows (the main model p_theta) and residual EBMs (the proxy q_psi)."""

from sbi_jeffreys.nets.ebm import FiLMResidualEnergy, ResidualEnergy, Standardize, energy_nn
from sbi_jeffreys.nets.flows import UnconditionalFlow, build_nsf

__all__ = ["FiLMResidualEnergy", "ResidualEnergy", "Standardize", "energy_nn", "UnconditionalFlow", "build_nsf"]
