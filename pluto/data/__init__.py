"""Datasets: Fashion-MNIST (Debian package), CIFAR-10 / ImageNet-style folders, a synthetic set for tests, and
super-resolution pairs (``fashion_mnist_sr``, ``imagefolder_sr``: :mod:`pluto.data.sr`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from pluto.config import ImageFolderData, SyntheticData
from pluto.data.fashion_mnist import load_fashion_mnist
from pluto.data.folders import load_cifar10, load_image_folder
from pluto.data.synthetic import make_synthetic
from pluto.errors import ConfigError, DataError

__all__ = ["DataSpec", "build_loaders", "build_datasets", "check_datasets", "infer_spec", "load_fashion_mnist", "load_cifar10", "load_image_folder", "make_synthetic"]


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


def _labels(dataset: Dataset) -> torch.Tensor | None:
    """All labels without loading images, where the dataset keeps them (``targets``, TensorDataset, Subset)."""
    if isinstance(dataset, Subset):
        inner = _labels(dataset.dataset)
        return None if inner is None else inner[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    targets = getattr(dataset, "targets", None)
    if targets is None and hasattr(dataset, "tensors") and len(dataset.tensors) >= 2:
        targets = dataset.tensors[1]
    return None if targets is None else torch.as_tensor(targets)


def infer_spec(dataset: Dataset, num_classes: int | None = None) -> DataSpec:
    """Shape of a user's dataset of ``(image CxHxW, label)`` pairs (classes counted from *all* labels unless
    given), or of ``(input CxHxW, target image Cx rH x rW)`` pairs (super-resolution: ``task='sr'``, ``scale=r``)."""
    try:
        x, y = dataset[0]
    except (TypeError, ValueError) as exc:
        raise DataError(f"dataset items must be (image, label) pairs; the first item is not ({exc})") from exc
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[1] != x.shape[2]:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConfigError(f"expected square CxHxW image tensors, got {shape}; convert images with "
                          "torchvision.transforms.ToTensor() (and crop/resize to a square)")
    if torch.is_tensor(y) and y.dim() == 3:  # (input, target image) pairs: super-resolution
        scale = int(y.shape[-1]) // int(x.shape[-1])
        if y.shape[0] != x.shape[0] or scale < 1 or tuple(y.shape[-2:]) != (x.shape[-2] * scale, x.shape[-1] * scale):
            raise ConfigError(f"image pairs must be C x H x W inputs and C x rH x rW targets, got {tuple(x.shape)} "
                              f"and {tuple(y.shape)}")
        return DataSpec(0, int(x.shape[0]), int(x.shape[1]), scale, "sr")
    if num_classes is None:
        targets = _labels(dataset)
        if targets is None:  # every item is read: a sorted dataset's first items name only its first classes
            targets = torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])
        if targets.numel() == 0:
            raise DataError("the training set is empty; pass at least one (image, label) pair")
        if targets.dtype.is_floating_point or targets.dtype == torch.bool or targets.dim() != 1:
            raise DataError(f"labels must be class indices (integers), got {targets.dtype} of shape "
                            f"{tuple(targets.shape)}")
        if int(targets.min()) < 0:
            raise DataError(f"labels must be class indices >= 0, got {int(targets.min())}")
        num_classes = int(targets.max()) + 1
        if num_classes < 2:
            raise DataError("the training labels hold a single class; classification needs at least two")
    return DataSpec(num_classes, int(x.shape[0]), int(x.shape[1]))


def check_datasets(datasets) -> tuple[Dataset, Dataset]:
    """A user's ``(train, test)`` pair: two non-empty datasets of (image, label) pairs."""
    if not isinstance(datasets, (tuple, list)) or len(datasets) != 2:
        raise ConfigError(f"data must be a dataset name or a (train, test) pair of datasets, got {type(datasets).__name__}"
                          + (f" of length {len(datasets)}" if isinstance(datasets, (tuple, list)) else ""))
    for name, ds in zip(("train", "test"), datasets):
        if not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__"):
            raise ConfigError(f"the {name} set must be a torch Dataset (with __len__ and __getitem__), got "
                              f"{type(ds).__name__}")
        if len(ds) == 0:
            raise DataError(f"the {name} set is empty; pass at least one (image, label) pair")
    return datasets[0], datasets[1]


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
        size = int(kwargs.get("input_size", ImageFolderData.input_size))
        train, test = load_image_folder(root, "train", size), load_image_folder(root, "val", size)
        spec = DataSpec(len(train.classes), 3, size)
    elif name == "synthetic":
        d = {**dataclasses.asdict(SyntheticData()), **kwargs}  # defaults: pluto.config, the one home
        size, channels, classes, n = int(d["input_size"]), int(d["in_channels"]), int(d["num_classes"]), int(d["num_samples"])
        train = make_synthetic(n, classes, channels, size, seed=0)
        test = make_synthetic(max(64, n // 4), classes, channels, size, seed=1)
        spec = DataSpec(classes, channels, size)
    else:
        raise ConfigError(f"unknown dataset {name!r}: choose one of fashion_mnist, cifar10, imagefolder, synthetic, "
                          "fashion_mnist_sr, imagefolder_sr")
    for label, limit in (("train_limit", train_limit), ("test_limit", test_limit)):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"data.{label}={limit!r}: give a number of images >= 1, or null for all of them")
    if train_limit is not None:
        train = Subset(train, range(min(train_limit, len(train))))
    if test_limit is not None:
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
