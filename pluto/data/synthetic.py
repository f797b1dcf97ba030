"""A tiny learnable dataset generated on the fly, for fast tests and smoke runs.

Each class is a fixed random template plus noise, so a small CNN separates them in a few
steps: tests can assert that training *learns*, not only that it runs.
"""
from __future__ import annotations

import torch
from torch.utils.data import TensorDataset


def make_synthetic(
    num_samples: int = 512,
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int = 28,
    noise: float = 0.5,
    seed: int = 0,
) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(num_classes, in_channels, input_size, input_size, generator=torch.Generator().manual_seed(1234))
    labels = torch.randint(0, num_classes, (num_samples,), generator=g)
    images = templates[labels] + noise * torch.randn(num_samples, in_channels, input_size, input_size, generator=g)
    return TensorDataset(images, labels)
