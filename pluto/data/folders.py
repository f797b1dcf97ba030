"""CIFAR-10 and ImageNet-style folders through torchvision, from paths the user gives.

Nothing is downloaded: a missing folder is an error that says what layout is expected.
"""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset
from torchvision import datasets, transforms

from pluto.errors import DataError

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load_cifar10(root: str | Path, train: bool = True, augment: bool = True) -> Dataset:
    """CIFAR-10 from the python-version folder (``cifar-10-batches-py``) under ``root``."""
    root = Path(root)
    if not (root / "cifar-10-batches-py").is_dir():
        raise DataError(
            f"CIFAR-10 not found under {root}: expected {root}/cifar-10-batches-py (the extracted "
            "cifar-10-python.tar.gz). Copy it there; pluto never downloads data."
        )
    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if (train and augment) else []
    tf = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    return datasets.CIFAR10(str(root), train=train, transform=tf, download=False)


def load_image_folder(root: str | Path, split: str = "train", input_size: int = 224, augment: bool = True) -> Dataset:
    """An ImageNet-style tree ``root/<split>/<class>/<image>``."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise DataError(f"image folder {folder} not found: expected {root}/{split}/<class_name>/<images>.")
    if split == "train" and augment:
        steps = [transforms.RandomResizedCrop(input_size), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(int(input_size * 256 / 224)), transforms.CenterCrop(input_size)]
    tf = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dataset = datasets.ImageFolder(str(folder), transform=tf)
    if len(dataset.classes) == 0:
        raise DataError(f"{folder} holds no class folders.")
    return dataset
