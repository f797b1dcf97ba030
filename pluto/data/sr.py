"""Super-resolution data: ``(low-resolution input, high-resolution target)`` image pairs in [0, 1].

- :func:`fashion_mnist_sr`: the 28x28 Fashion-MNIST images as targets, their x``scale`` downsampled copies
  (area = mean of each ``scale x scale`` block, or antialiased bicubic) as inputs; held in memory.
- :class:`ImageFolderSR`: a user's own images (any tree of png/jpg/... under ``root/<split>``): random
  ``crop x crop`` target crops (and flips) for training, the centre crop for evaluation.

Pixels are not normalized: PSNR and SSIM are computed on the [0, 1] range the images live in.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from pluto.errors import ConfigError, DataError

DOWNSAMPLING = ("area", "bicubic")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def downsample(hr: Tensor, scale: int, method: str = "area") -> Tensor:
    """The low-resolution copy of N x C x H x W images in [0, 1] (H, W divisible by ``scale``)."""
    if method not in DOWNSAMPLING:
        raise ConfigError(f"data.downsample must be one of {DOWNSAMPLING}, got {method!r}")
    if hr.shape[-1] % scale or hr.shape[-2] % scale:
        raise ConfigError(f"image size {tuple(hr.shape[-2:])} is not divisible by scale {scale}")
    if method == "area":
        return F.avg_pool2d(hr, scale)
    lr = F.interpolate(hr, scale_factor=1.0 / scale, mode="bicubic", align_corners=False, antialias=True)
    return lr.clamp(0.0, 1.0)


def fashion_mnist_sr(train: bool = True, root: str | os.PathLike | None = None, scale: int = 2,
                     method: str = "area", limit: int | None = None) -> TensorDataset:
    """Pairs ``(1 x 28/scale x 28/scale input, 1 x 28 x 28 target)`` of the train (60k) or test (10k) split."""
    from pluto.data.fashion_mnist import FILES, _read_idx, resolve_root

    images = _read_idx(resolve_root(root) / FILES[train][0])
    if limit is not None:
        images = images[:limit]
    hr = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return TensorDataset(downsample(hr, scale, method), hr)


class ImageFolderSR(Dataset):
    """``(input, target)`` crops of every image under ``root/<split>`` (searched recursively).

    ``crop``: target crop size in pixels (a multiple of ``scale``); ``channels``: 1 (grayscale) or 3 (RGB).
    Training crops are random (``train=True``; position and horizontal flip); evaluation uses the centre crop.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", crop: int = 64, scale: int = 2,
                 channels: int = 3, method: str = "area", train: bool | None = None):
        folder = Path(root) / split
        if not Path(root).is_dir():
            raise DataError(f"data.root={root} is not a folder: point data.root at a folder holding train/ and val/ "
                            f"sub-folders of images ({', '.join(IMAGE_EXTENSIONS)}).")
        if not folder.is_dir():
            raise DataError(f"image folder {folder} not found: expected {root}/{split}/ holding images "
                            f"({', '.join(IMAGE_EXTENSIONS)}), in any sub-folders.")
        if crop % scale:
            raise ConfigError(f"data.crop={crop} must be a multiple of data.scale={scale}")
        if channels not in (1, 3):
            raise ConfigError(f"data.in_channels must be 1 or 3, got {channels}")
        self.files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not self.files:
            raise DataError(f"{folder} holds no images: put {split} images ({', '.join(IMAGE_EXTENSIONS)}) in it or "
                            "its sub-folders.")
        self.crop, self.scale, self.channels, self.method = crop, scale, channels, method
        self.train = split == "train" if train is None else train

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, path: Path) -> Tensor:
        from PIL import Image

        with Image.open(path) as img:
            img = img.convert("L" if self.channels == 1 else "RGB")
            if min(img.size) < self.crop:
                raise DataError(f"{path} is {img.size[0]}x{img.size[1]}, smaller than data.crop={self.crop}")
            array = np.asarray(img, dtype=np.float32) / 255.0
        t = torch.from_numpy(array.copy())
        return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        img = self._load(self.files[index])
        h, w = img.shape[-2:]
        if self.train:
            top, left = (int(torch.randint(0, d - self.crop + 1, ())) for d in (h, w))  # torch RNG: resumable
        else:
            top, left = (h - self.crop) // 2, (w - self.crop) // 2
        hr = img[:, top:top + self.crop, left:left + self.crop]
        if self.train and bool(torch.rand(()) < 0.5):
            hr = hr.flip(-1)
        return downsample(hr.unsqueeze(0), self.scale, self.method)[0], hr.contiguous()
