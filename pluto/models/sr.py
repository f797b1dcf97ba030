"""Super-resolution networks: an EDSR-style residual network and an ESPCN-style one, both ending in PixelShuffle.

Both map a ``in_channels x H x W`` low-resolution image to ``in_channels x rH x rW`` (``r = scale``).
Values are images in [0, 1]; ``residual='bilinear'`` (the default) adds the bilinearly upsampled input to
the output (a long skip across resolutions), so the network learns only the missing detail.

- :class:`EDSR` (Lim et al. 2017): head conv, ``blocks`` residual blocks without BatchNorm (conv-ReLU-conv,
  scaled by ``res_scale``), a body-end conv with the *global skip* from the head, an upsampler
  (conv to ``width * r^2`` channels + PixelShuffle) and a tail conv at the output resolution.
- :class:`ESPCN` (Shi et al. 2016): two convs at the input resolution, a conv to ``out * r^2`` channels and
  PixelShuffle; all computation stays at low resolution.

Channel pruning ties the ``r^2`` upsampler channels that PixelShuffle folds into one output channel
(:mod:`pluto.decisions.channels.labels`); the global skip ties the head, every block's last conv and the
body-end conv into one group; the image-producing last conv is protected (the network output).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from pluto.errors import ConfigError

RESIDUALS = ("bilinear", "bicubic", "nearest", "none")


def _check(scale: int, residual: str) -> None:
    if scale < 1:
        raise ConfigError(f"scale must be >= 1, got {scale}")
    if residual not in RESIDUALS:
        raise ConfigError(f"residual must be one of {RESIDUALS}, got {residual!r}")


def _upsampled(x: Tensor, scale: int, mode: str) -> Tensor:
    return F.interpolate(x, scale_factor=scale, mode=mode, **({} if mode == "nearest" else {"align_corners": False}))


class ResBlock(nn.Module):
    """``x + res_scale * conv(relu(conv(x)))`` (EDSR's block: no BatchNorm)."""

    def __init__(self, width: int, res_scale: float = 1.0):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.act(self.conv1(x)))
        return x + y * self.res_scale if self.res_scale != 1.0 else x + y


class EDSR(nn.Module):
    def __init__(self, in_channels: int = 1, scale: int = 2, width: int = 32, blocks: int = 4,
                 res_scale: float = 1.0, residual: str = "bilinear"):
        super().__init__()
        _check(scale, residual)
        self.scale, self.residual = scale, residual
        self.head = nn.Conv2d(in_channels, width, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(width, res_scale) for _ in range(blocks)])
        self.body_end = nn.Conv2d(width, width, 3, padding=1)
        self.upsampler = nn.Sequential(nn.Conv2d(width, width * scale * scale, 3, padding=1), nn.PixelShuffle(scale))
        self.tail = nn.Conv2d(width, in_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.head(x)
        h = h + self.body_end(self.body(h))  # global skip
        out = self.tail(self.upsampler(h))
        if self.residual != "none":
            out = out + _upsampled(x, self.scale, self.residual)
        return out


class ESPCN(nn.Module):
    def __init__(self, in_channels: int = 1, scale: int = 2, width: int = 64, mid: int = 32,
                 residual: str = "bilinear"):
        super().__init__()
        _check(scale, residual)
        self.scale, self.residual = scale, residual
        self.conv1 = nn.Conv2d(in_channels, width, 5, padding=2)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, mid, 3, padding=1)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(mid, in_channels * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: Tensor) -> Tensor:
        out = self.shuffle(self.conv3(self.act2(self.conv2(self.act1(self.conv1(x))))))
        if self.residual != "none":
            out = out + _upsampled(x, self.scale, self.residual)
        return out
