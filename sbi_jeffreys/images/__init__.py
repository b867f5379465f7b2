"""Images for the latent experiment (paper §5.3): datasets, the autoencoder of App. C.2, FID.

Needs the optional extra: ``pip install -e ".[images]"`` (torchmetrics, pillow).
"""

from sbi_jeffreys.images.codec import Autoencoder
from sbi_jeffreys.images.data import DATASETS, load_images
from sbi_jeffreys.images.fid import FID, InceptionPool3, frechet_distance, inception_weights_path

__all__ = [
    "DATASETS",
    "FID",
    "Autoencoder",
    "InceptionPool3",
    "frechet_distance",
    "inception_weights_path",
    "load_images",
]
