"""SR data on known images: Fashion-MNIST x2 pairs, image folders of crops, and the spec of user pairs."""
import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from pluto.data import build_datasets, infer_spec
from pluto.data.fashion_mnist import FILES, _read_idx, resolve_root
from pluto.data.sr import ImageFolderSR, downsample
from pluto.errors import ConfigError, DataError


def test_area_downsampling_of_a_known_image():
    hr = torch.zeros(1, 1, 4, 4)
    hr[..., :2, :2] = 1.0
    hr[..., 2:, 2:] = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert torch.equal(downsample(hr, 2, "area"), torch.tensor([[[[1.0, 0.0], [0.0, 0.5]]]]))
    flat = torch.full((1, 1, 8, 8), 0.25)
    assert torch.allclose(downsample(flat, 2, "bicubic"), torch.full((1, 1, 4, 4), 0.25), atol=1e-6)
    with pytest.raises(ConfigError, match="divisible"):
        downsample(torch.zeros(1, 1, 5, 5), 2)


def test_fashion_mnist_sr_pairs_are_the_real_images():
    train, test, spec = build_datasets("fashion_mnist_sr", train_limit=64, test_limit=32, scale=2)
    assert (spec.in_channels, spec.input_size, spec.scale, spec.task) == (1, 14, 2, "sr")
    assert spec.target_shape == (1, 1, 28, 28) and len(train) == 64 and len(test) == 32
    lr, hr = train[0]
    raw = _read_idx(resolve_root() / FILES[True][0])[0]
    assert torch.equal(hr[0], torch.from_numpy(raw.astype(np.float32) / 255.0))
    assert lr.shape == (1, 14, 14) and torch.allclose(lr, hr.view(1, 14, 2, 14, 2).mean((2, 4)))
    assert 0.0 <= float(hr.min()) and float(hr.max()) <= 1.0
    _, full_test, _ = build_datasets("fashion_mnist_sr")
    assert len(full_test) == 10_000
    _, _, spec4 = build_datasets("fashion_mnist_sr", train_limit=4, test_limit=4, scale=4, downsample="bicubic")
    assert spec4.input_size == 7
    with pytest.raises(ConfigError, match="divide"):
        build_datasets("fashion_mnist_sr", train_limit=4, test_limit=4, scale=3)


def test_imagefolder_sr_random_and_centre_crops(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        (tmp_path / split / "any").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / split / "any" / f"{i}.png")
    train, test, spec = build_datasets("imagefolder_sr", str(tmp_path), crop=16, scale=2, in_channels=3)
    assert (spec.in_channels, spec.input_size, spec.scale, len(train), len(test)) == (3, 8, 2, 3, 2)
    lr, hr = train[0]
    assert lr.shape == (3, 8, 8) and hr.shape == (3, 16, 16)
    assert torch.allclose(lr, downsample(hr[None], 2)[0])
    a, b = test[1], test[1]
    assert torch.equal(a[1], b[1])  # evaluation crops are deterministic (centre)
    img = np.asarray(Image.open(test.files[1]).convert("RGB"), dtype=np.float32) / 255.0
    assert torch.allclose(a[1], torch.from_numpy(img[12:28, 17:33]).permute(2, 0, 1))
    gray = ImageFolderSR(tmp_path, "val", crop=16, scale=2, channels=1)
    assert gray[0][1].shape == (1, 16, 16)
    with pytest.raises(DataError, match="smaller than"):
        ImageFolderSR(tmp_path, "val", crop=64, scale=2)[0]
    with pytest.raises(DataError, match="not found"):
        ImageFolderSR(tmp_path, "test")


def test_infer_spec_of_user_image_pairs():
    pairs = TensorDataset(torch.rand(4, 3, 8, 8), torch.rand(4, 3, 24, 24))
    spec = infer_spec(pairs)
    assert (spec.task, spec.scale, spec.in_channels, spec.input_size, spec.num_classes) == ("sr", 3, 3, 8, 0)
    with pytest.raises(ConfigError, match="pairs"):
        infer_spec(TensorDataset(torch.rand(2, 3, 8, 8), torch.rand(2, 1, 16, 16)))
