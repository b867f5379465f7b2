"""Classifier two-sample tests (C2ST): accuracy of a classifier telling X from Y.

0.5 means indistinguishable samples, 1.0 perfectly separable ones. Two variants:

- :func:`c2st_sbibm` is sbibm's own ``sbibm.metrics.c2st`` (z-scoring with X's statistics, an
  MLP with two hidden layers of ``10 * dim`` units, 5-fold cross-validated accuracy): the
  metric behind sbibm's published tables, so our numbers compare with them. (sbi's own
  ``c2st`` defaults to a random forest and gives different numbers.)
- ``"torch"`` (:mod:`sbi_jeffreys.benchmark.c2st_torch`) is sbibm's classifier and protocol
  trained in torch, many tests as one batched model: a sweep cell's observations score together
  on its device. It agrees with sbibm's within the classifier's seed-to-seed spread.
- :func:`c2st_paper` is the paper's variant: a ``HistGradientBoostingClassifier`` trained on
  70% of the pooled samples and scored by its accuracy on the held-out 30%.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

__all__ = ["c2st_sbibm", "c2st_paper", "c2st_torch", "C2ST_METRICS", "get_c2st"]


def _as_2d_float(name: str, a) -> torch.Tensor:
    t = torch.as_tensor(a).detach().to("cpu", torch.float32)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2 or t.shape[0] < 2:
        raise ValueError(f"{name} must be (num_samples >= 2, dim), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return t


def _check_pair(X, Y) -> tuple[torch.Tensor, torch.Tensor]:
    X, Y = _as_2d_float("X", X), _as_2d_float("Y", Y)
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"X and Y differ in dimension: {X.shape[1]} vs {Y.shape[1]}")
    return X, Y


def c2st_sbibm(X, Y, seed: int = 1, n_folds: int = 5) -> float:
    """C2ST accuracy exactly as sbibm computes it (``sbibm.metrics.c2st``).

    Args:
        X, Y: samples of shape ``(n, dim)`` and ``(m, dim)`` (tensors or arrays).
        seed: seed of the MLP's initialisation and of the fold shuffling (sbibm uses 1).
        n_folds: number of cross-validation folds (sbibm uses 5).
    """
    from sbibm.metrics import c2st

    X, Y = _check_pair(X, Y)
    return float(c2st(X, Y, seed=seed, n_folds=n_folds)[0])


def c2st_paper(X, Y, seed: int = 0) -> float:
    """The paper's C2ST: ``HistGradientBoostingClassifier`` accuracy on a 30% test split.

    The pooled samples (label 0 for X, 1 for Y) are split 70/30, stratified by label, with
    ``random_state=seed``; the classifier (sklearn defaults, ``random_state=seed``) is fit on
    the 70% and its accuracy on the 30% is returned.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import train_test_split

    X, Y = _check_pair(X, Y)
    data = np.concatenate([X.numpy(), Y.numpy()])
    target = np.concatenate([np.zeros(len(X)), np.ones(len(Y))])
    d_train, d_test, t_train, t_test = train_test_split(data, target, test_size=0.3, random_state=seed, stratify=target)
    clf = HistGradientBoostingClassifier(random_state=seed).fit(d_train, t_train)
    return float(clf.score(d_test, t_test))


#: C2ST variants by name (the ``--c2st`` option of ``experiments/sbi_sweep.py``).
def c2st_torch(X, Y, seed: int = 1, n_folds: int = 5, device: str | torch.device = "cpu") -> float:
    """One C2ST by :func:`~sbi_jeffreys.benchmark.c2st_torch.c2st_batched`: sbibm's classifier
    and protocol, trained in torch (on ``device``)."""
    from sbi_jeffreys.benchmark.c2st_torch import c2st_batched

    X, Y = _check_pair(X, Y)
    return c2st_batched([(X, Y)], seed=seed, n_folds=n_folds, device=device)[0]


C2ST_METRICS: dict[str, Callable[..., float]] = {"sbibm": c2st_sbibm, "paper": c2st_paper, "torch": c2st_torch}


def get_c2st(kind: str) -> Callable[..., float]:
    """The C2ST function named ``kind`` (``"sbibm"``, ``"torch"`` or ``"paper"``); ValueError otherwise."""
    try:
        return C2ST_METRICS[kind]
    except KeyError:
        raise ValueError(f"Unknown C2ST variant {kind!r}; valid variants are: {', '.join(C2ST_METRICS)}") from None
