import gzip

import numpy as np
import pytest
import torch

from pluto.data import build_datasets, build_loaders, make_synthetic
from pluto.data.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist
from pluto.errors import ConfigError, DataError

needs_fmnist = pytest.mark.skipif(not (DEFAULT_ROOT / "t10k-images-idx3-ubyte.gz").exists(),
                                  reason="dataset-fashion-mnist not installed (scripts/setup.sh installs it)")


@needs_fmnist
def test_fashion_mnist_test_split_shapes_and_normalization():
    ds = load_fashion_mnist(train=False)
    x, y = ds.tensors
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (10000,) and set(y.unique().tolist()) == set(range(10))
    assert abs(x.mean().item()) < 0.1 and 0.8 < x.std().item() < 1.2


def test_missing_fashion_mnist_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr("pluto.data.fashion_mnist.DEFAULT_ROOT", tmp_path / "absent")
    monkeypatch.delenv("PLUTO_FASHION_MNIST", raising=False)
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_fashion_mnist(root=tmp_path)


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_from_user_folder_and_truncation_error(tmp_path):
    for split, n in (("train", 6), ("t10k", 4)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", np.random.randint(0, 255, (n, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    ds = load_fashion_mnist(train=True, root=tmp_path)
    assert len(ds) == 6 and ds.tensors[1].tolist() == [0, 1, 2, 3, 4, 5]
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (4).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0" * 100)
    with pytest.raises(DataError, match="truncated"):
        load_fashion_mnist(train=False, root=tmp_path)


def test_synthetic_is_deterministic_and_class_separable():
    a, b = make_synthetic(64, seed=3), make_synthetic(64, seed=3)
    assert torch.equal(a.tensors[0], b.tensors[0])
    x, y = make_synthetic(400, noise=0.5).tensors
    # nearest class mean recovers the label: the set is learnable, so training tests can assert learning
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    pred = torch.cdist(x.flatten(1), means.flatten(1)).argmin(1)
    assert (pred == y).float().mean() > 0.9


def test_loaders_and_limits():
    train, test, spec = build_loaders("synthetic", batch_size=32, num_samples=100, input_size=32, in_channels=3, train_limit=50)
    assert spec.input_shape == (1, 3, 32, 32)
    assert len(train.dataset) == 50
    assert next(iter(train))[0].shape == (32, 3, 32, 32)


def test_unknown_dataset_and_missing_roots():
    with pytest.raises(ConfigError, match="unknown dataset"):
        build_datasets("mnist3d")
    with pytest.raises(ConfigError, match="data.root"):
        build_datasets("cifar10")
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        build_datasets("cifar10", root="/nonexistent")
