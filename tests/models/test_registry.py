import pytest
import torch

from pluto.errors import ConfigError
from pluto.models import SR_MODELS, create_model, list_models

FAST = ["small_cnn", "resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf",
        "shufflenet_v2_x0_5", "mnasnet0_5", "squeezenet1_1"]


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_registered_models_take_small_inputs(name, channels, size):
    model = create_model(name, num_classes=7, in_channels=channels, input_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_registered_model(name):
    model = create_model(name, in_channels=1, input_size=28).eval()
    with torch.no_grad():
        expected = (1, 1, 28 * model.scale, 28 * model.scale) if name in SR_MODELS else (1, 10)
        assert model(torch.randn(1, 1, 28, 28)).shape == expected


@pytest.mark.parametrize("name", SR_MODELS)
@pytest.mark.parametrize("channels,scale", [(1, 2), (3, 3)])
def test_sr_models_upscale(name, channels, scale):
    model = create_model(name, in_channels=channels, input_size=10, scale=scale).eval()
    with torch.no_grad():
        assert model(torch.rand(2, channels, 10, 10)).shape == (2, channels, 10 * scale, 10 * scale)
    with pytest.raises(ConfigError, match="residual"):
        create_model(name, residual="lanczos")


def test_small_input_stem_keeps_resolution():
    model = create_model("resnet18", in_channels=1, input_size=28)
    assert model.conv1.in_channels == 1 and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    big = create_model("resnet18", in_channels=3, input_size=224)
    assert big.conv1.stride == (2, 2) and isinstance(big.maxpool, torch.nn.MaxPool2d)


def test_width_scaling_shrinks_small_cnn():
    full = sum(p.numel() for p in create_model("small_cnn").parameters())
    half = sum(p.numel() for p in create_model("small_cnn", width=0.5).parameters())
    assert half < 0.35 * full


def test_unknown_model_lists_choices():
    with pytest.raises(ConfigError, match="resnet18"):
        create_model("resnet19")
