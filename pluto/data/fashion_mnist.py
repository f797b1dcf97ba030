"""Fashion-MNIST read from Debian's ``dataset-fashion-mnist`` package (IDX gzip files).

No download ever happens at run time: the files come from the system package, or from a
folder the user names (``root``) holding the same four ``*-ubyte.gz`` files.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from pluto.errors import DataError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    True: ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    False: ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Per-pixel statistics of the training split, so inputs are zero-mean / unit-variance.
MEAN, STD = 0.2860, 0.3530
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the IDX files: ``root`` when given (and only it), else ``$PLUTO_FASHION_MNIST``, else
    the Debian package path. A named folder that lacks the files is an error, never a silent fall-back."""
    if root:
        candidates = [Path(root)]
    elif os.environ.get("PLUTO_FASHION_MNIST"):
        candidates = [Path(os.environ["PLUTO_FASHION_MNIST"])]
    else:
        candidates = [DEFAULT_ROOT]
    for folder in candidates:
        if all((folder / name).is_file() for pair in FILES.values() for name in pair):
            return folder
    folder = candidates[0]
    wanted = [name for pair in FILES.values() for name in pair]
    if root or os.environ.get("PLUTO_FASHION_MNIST"):
        source = "data.root" if root else "$PLUTO_FASHION_MNIST"
        state = "does not exist" if not folder.exists() else (
            "is not a folder" if not folder.is_dir() else
            f"lacks {', '.join(n for n in wanted if not (folder / n).is_file())}")
        raise DataError(f"{source}={folder} {state}; point it at a folder holding the four Fashion-MNIST files "
                        f"({', '.join(wanted)}), or unset it to use the installed package "
                        f"dataset-fashion-mnist at {DEFAULT_ROOT}.")
    raise DataError(
        f"Fashion-MNIST not found (looked in {folder}). Install it with "
        "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or point data.root / "
        "$PLUTO_FASHION_MNIST at a folder holding the four *-ubyte.gz files."
    )


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} is not a readable gzip file ({exc}); reinstall dataset-fashion-mnist.") from exc
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file; reinstall dataset-fashion-mnist.")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated ({data.size} of {int(np.prod(shape))} values); reinstall dataset-fashion-mnist.")
    return data.reshape(shape)


def load_fashion_mnist(train: bool = True, root: str | os.PathLike | None = None, limit: int | None = None) -> TensorDataset:
    """Images as normalized float32 N x 1 x 28 x 28 and int64 labels, held in memory (47 MB for train)."""
    folder = resolve_root(root)
    images_file, labels_file = FILES[train]
    images = _read_idx(folder / images_file)
    labels = _read_idx(folder / labels_file)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    x = (x - MEAN) / STD
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))
