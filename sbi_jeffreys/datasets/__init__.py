r"""Datasets of the paper's experiments."""

from .toy2d import DATASETS, GMM40_SEED, GaussianMixture, Toy2D, load_toy2d, plot_range, true_log_prob

__all__ = [
    "DATASETS",
    "GMM40_SEED",
    "GaussianMixture",
    "Toy2D",
    "load_toy2d",
    "plot_range",
    "true_log_prob",
]
