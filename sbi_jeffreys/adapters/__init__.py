"""Adapters: the only modules that know a use case.

* :mod:`sbi_jeffreys.adapters.density` — unconditional density estimation (App. D.1/D.2);
* :mod:`sbi_jeffreys.adapters.sbi` — ``JeffreysNPE`` and its posterior (conditional, D.4).

Adapters build the networks, standardise the data and drive
:class:`sbi_jeffreys.engine.JeffreysTrainer`; none re-implements the objective. Import the
submodules directly (nothing is imported here, so that the density adapter never pulls in sbi).
"""
