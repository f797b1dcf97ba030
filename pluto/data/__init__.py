"""Datasets: Fashion-MNIST (Debian package), CIFAR-10 / ImageNet-style folders, a synthetic set for tests, and
super-resolution pairs (``fashion_mnist_sr``, ``imagefolder_sr``: :mod:`pluto.data.sr`)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from pluto.data.fashion_mnist import load_fashion_mnist
from pluto.data.folders import load_cifar10, load_image_folder
from pluto.data.synthetic import make_synthetic
from pluto.errors import ConfigError

__all__ = ["DataSpec", "build_loaders", "build_datasets", "infer_spec", "load_fashion_mnist", "load_cifar10", "load_image_folder", "make_synthetic"]


@dataclass
class DataSpec:
    """What a model needs to know about its data: input shape and class count.

    Dense tasks set ``task`` (``sr``: targets are images) and ``scale`` (target size / input size); their
    ``num_classes`` is 0.
    """

    num_classes: int
    in_channels: int
    input_size: int
    scale: int = 1
    task: str = "classification"

    @property
    def target_shape(self) -> tuple[int, ...]:
        """Shape of one target of a batch of one: (1,) labels, or (1, C, rH, rW) images."""
        if self.task == "classification":
            return (1,)
        return (1, self.in_channels, self.input_size * self.scale, self.input_size * self.scale)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.in_channels, self.input_size, self.input_size)


def infer_spec(dataset: Dataset, num_classes: int | None = None) -> DataSpec:
    """Shape of a user's dataset of ``(image CxHxW, label)`` pairs; classes counted from labels unless given."""
    x, y = dataset[0]
    if x.dim() != 3 or x.shape[1] != x.shape[2]:
        raise ConfigError(f"expected square CxHxW image tensors, got shape {tuple(x.shape)}")
    if torch.is_tensor(y) and y.dim() == 3:  # (input, target image) pairs: super-resolution
        scale = int(y.shape[-1]) // int(x.shape[-1])
        if y.shape[0] != x.shape[0] or scale < 1 or tuple(y.shape[-2:]) != (x.shape[-2] * scale, x.shape[-1] * scale):
            raise ConfigError(f"image pairs must be C x H x W inputs and C x rH x rW targets, got {tuple(x.shape)} "
                              f"and {tuple(y.shape)}")
        return DataSpec(0, int(x.shape[0]), int(x.shape[1]), scale, "sr")
    if num_classes is None:
        targets = getattr(dataset, "targets", None)
        if targets is None and hasattr(dataset, "tensors"):
            targets = dataset.tensors[1]
        if targets is None:
            targets = torch.tensor([int(dataset[i][1]) for i in range(min(len(dataset), 5000))])
        num_classes = int(torch.as_tensor(targets).max()) + 1
    return DataSpec(num_classes, int(x.shape[0]), int(x.shape[1]))


def build_datasets(name: str, root: str | None = None, train_limit: int | None = None, test_limit: int | None = None,
                   **kwargs) -> tuple[Dataset, Dataset, DataSpec]:
    """Train and test datasets plus their shape, by short name: fashion_mnist, cifar10, imagefolder, synthetic,
    fashion_mnist_sr, imagefolder_sr."""
    if name == "fashion_mnist_sr":
        from pluto.data.sr import fashion_mnist_sr

        scale, method = int(kwargs.get("scale", 2)), str(kwargs.get("downsample", "area"))
        if 28 % scale:
            raise ConfigError(f"data.scale={scale} must divide Fashion-MNIST's 28 px")
        train = fashion_mnist_sr(True, root, scale, method, train_limit)
        test = fashion_mnist_sr(False, root, scale, method, test_limit)
        spec = DataSpec(0, 1, 28 // scale, scale, "sr")
    elif name == "imagefolder_sr":
        from pluto.data.sr import ImageFolderSR

        if root is None:
            raise ConfigError("data=imagefolder_sr needs data.root=/path/with/train/and/val/folders of images")
        scale, crop, channels = int(kwargs.get("scale", 2)), int(kwargs.get("crop", 64)), int(kwargs.get("in_channels", 3))
        method = str(kwargs.get("downsample", "area"))
        train = ImageFolderSR(root, "train", crop, scale, channels, method)
        test = ImageFolderSR(root, "val", crop, scale, channels, method)
        spec = DataSpec(0, channels, crop // scale, scale, "sr")
    elif name == "fashion_mnist":
        train = load_fashion_mnist(True, root)
        test = load_fashion_mnist(False, root)
        spec = DataSpec(10, 1, 28)
    elif name == "cifar10":
        if root is None:
            raise ConfigError("data=cifar10 needs data.root=/path/containing/cifar-10-batches-py")
        train, test = load_cifar10(root, True), load_cifar10(root, False)
        spec = DataSpec(10, 3, 32)
    elif name == "imagefolder":
        if root is None:
            raise ConfigError("data=imagefolder needs data.root=/path/with/train/and/val/folders")
        size = int(kwargs.get("input_size", 224))
        train, test = load_image_folder(root, "train", size), load_image_folder(root, "val", size)
        spec = DataSpec(len(train.classes), 3, size)
    elif name == "synthetic":
        size, channels, classes = int(kwargs.get("input_size", 28)), int(kwargs.get("in_channels", 1)), int(kwargs.get("num_classes", 10))
        train = make_synthetic(int(kwargs.get("num_samples", 512)), classes, channels, size, seed=0)
        test = make_synthetic(max(64, int(kwargs.get("num_samples", 512)) // 4), classes, channels, size, seed=1)
        spec = DataSpec(classes, channels, size)
    else:
        raise ConfigError(f"unknown dataset {name!r}: choose one of fashion_mnist, cifar10, imagefolder, synthetic, "
                          "fashion_mnist_sr, imagefolder_sr")
    if train_limit:
        train = Subset(train, range(min(train_limit, len(train))))
    if test_limit:
        test = Subset(test, range(min(test_limit, len(test))))
    return train, test, spec


def build_loaders(name: str, batch_size: int = 128, num_workers: int = 0, seed: int = 0, root: str | None = None,
                  train_limit: int | None = None, test_limit: int | None = None,
                  **kwargs) -> tuple[DataLoader, DataLoader, DataSpec]:
    """Shuffled train loader (seeded) and ordered test loader."""
    train, test, spec = build_datasets(name, root, train_limit, test_limit, **kwargs)
    g = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=g, num_workers=num_workers, drop_last=False)
    test_loader = DataLoader(test, batch_size=max(batch_size, 256), shuffle=False, num_workers=num_workers)
    return train_loader, test_loader, spec
