"""Short model names -> constructors, timm-style: ``create_model("resnet18", in_channels=1, input_size=28)``.

torchvision classifiers are built with ``weights=None`` (pluto never downloads weights) and
adapted to small inputs: the stem takes ``in_channels`` and, below 64 px, keeps full
resolution (stride 1, no max-pool), as is standard for CIFAR/MNIST-sized images.
"""
from __future__ import annotations

from typing import Callable

import torchvision.models as tvm
from torch import nn

from pluto.errors import ConfigError
from pluto.models.small_cnn import SmallCNN

SMALL_INPUT = 64  # below this many pixels the stem's downsampling is removed
SR_MODELS = ("edsr", "espcn")  # image-to-image (super-resolution) models: output C x rH x rW, not logits

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = fn
        return fn
    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int = 10, in_channels: int = 1, input_size: int = 28, **kwargs) -> nn.Module:
    """Build a registered model with random weights, ready for ``in_channels x input_size x input_size`` inputs.

    The model remembers how it was built (``model.pluto_spec``), so :func:`pluto.save` can rebuild it.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    try:
        model = _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, input_size=input_size, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"model {name!r} does not accept these arguments: {exc}") from exc
    model.pluto_spec = {"name": name, "kwargs": {"num_classes": num_classes, "in_channels": in_channels,
                                                 "input_size": input_size, **kwargs}}
    return model


@register("resnet20")
def resnet20(num_classes: int, in_channels: int, input_size: int, width: float = 1.0) -> nn.Module:
    """CIFAR-style ResNet-20 (16/32/64 channels, ~0.27 M params): the classic pruning benchmark."""
    from pluto.models.resnet_cifar import CifarResNet

    return CifarResNet(20, num_classes, in_channels, width)


@register("resnet56")
def resnet56(num_classes: int, in_channels: int, input_size: int, width: float = 1.0) -> nn.Module:
    """CIFAR-style ResNet-56 (~0.85 M params)."""
    from pluto.models.resnet_cifar import CifarResNet

    return CifarResNet(56, num_classes, in_channels, width)


@register("small_cnn")
def small_cnn(num_classes: int, in_channels: int, input_size: int, width: float = 1.0, dropout: float = 0.1) -> nn.Module:
    return SmallCNN(num_classes, in_channels, width, dropout)


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name) if parent_name else model, attr, module
    raise ConfigError(f"{type(model).__name__} has no Conv2d stem to adapt")


def adapt_stem(model: nn.Module, in_channels: int, input_size: int) -> nn.Module:
    """Swap the first conv for one taking ``in_channels``; on small inputs drop its stride and any stem max-pool."""
    parent, attr, conv = _first_conv(model)
    small = input_size < SMALL_INPUT
    kernel = (3, 3) if small and conv.kernel_size[0] > 3 else conv.kernel_size
    stride = (1, 1) if small else conv.stride
    padding = tuple(k // 2 for k in kernel) if small else conv.padding
    setattr(parent, attr, nn.Conv2d(in_channels, conv.out_channels, kernel, stride, padding, bias=conv.bias is not None))
    if small and isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
        model.maxpool = nn.Identity()
    return model


def _torchvision(ctor_name: str, **fixed) -> Callable[..., nn.Module]:
    ctor = getattr(tvm, ctor_name)

    def build(num_classes: int, in_channels: int, input_size: int, **kwargs) -> nn.Module:
        model = ctor(weights=None, num_classes=num_classes, **fixed, **kwargs)
        return adapt_stem(model, in_channels, input_size)

    build.__doc__ = f"torchvision.models.{ctor_name} (random weights) adapted to small inputs."
    return build


TORCHVISION_MODELS = [
    "resnet18", "resnet34", "resnet50", "resnext50_32x4d", "wide_resnet50_2",
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_v2_s",
    "regnet_x_400mf", "regnet_y_400mf", "regnet_x_800mf",
    "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "mnasnet0_5", "mnasnet1_0",
    "densenet121", "squeezenet1_1", "convnext_tiny",
]
for _name in TORCHVISION_MODELS:
    register(_name)(_torchvision(_name))


@register("supernet")
def supernet(num_classes: int, in_channels: int, input_size: int, space: str = "mbconv_28", **overrides) -> nn.Module:
    """A NAS supernet (``pluto.decisions.ops``) from a preset space, resized to the data's shape."""
    from pluto.decisions.ops.config import space_config
    from pluto.decisions.ops.supernet import Supernet

    config = space_config(space, num_classes=num_classes, in_channels=in_channels, input_size=input_size, **overrides)
    return Supernet(config)


@register("edsr")
def edsr(num_classes: int, in_channels: int, input_size: int, scale: int = 2, width: int = 32, blocks: int = 4,
         res_scale: float = 1.0, residual: str = "bilinear") -> nn.Module:
    """EDSR-style super-resolution (``pluto.models.sr``); ``num_classes`` is unused (the output is an image)."""
    from pluto.models.sr import EDSR

    return EDSR(in_channels, scale, int(width), blocks, res_scale, residual)  # the config schema reads width as a float


@register("espcn")
def espcn(num_classes: int, in_channels: int, input_size: int, scale: int = 2, width: int = 64, mid: int = 32,
          residual: str = "bilinear") -> nn.Module:
    """ESPCN-style super-resolution (``pluto.models.sr``); ``num_classes`` is unused (the output is an image)."""
    from pluto.models.sr import ESPCN

    return ESPCN(in_channels, scale, int(width), mid, residual)
