"""A small VGG-style CNN with BatchNorm: the fast baseline for 28x28 / 32x32 inputs.

``width`` scales every layer's channels, which is also the "uniform width scaling"
baseline the joint optimizer is compared against.
"""
from __future__ import annotations

from torch import nn


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0, dropout: float = 0.1):
        super().__init__()
        c = [max(4, int(round(w * width))) for w in (32, 64, 128)]
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, c[0]),
            _conv_bn_relu(c[0], c[0]),
            nn.MaxPool2d(2),
            _conv_bn_relu(c[0], c[1]),
            _conv_bn_relu(c[1], c[1]),
            nn.MaxPool2d(2),
            _conv_bn_relu(c[1], c[2]),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c[2], num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))
