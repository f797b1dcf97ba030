import pytest
import torch
from torch import nn

from pluto.cost.ops import OpSpec, extract_ops, total_macs
from pluto.errors import UnsupportedModelError
from pluto.models import create_model


def test_resnet18_fuses_conv_bn_relu_and_add_relu():
    ops = extract_ops(create_model("resnet18"), (1, 28, 28))
    first = ops[0]
    assert (first.kind, first.cin, first.cout, first.kernel, first.hw, first.act, first.bn) == \
        ("conv", 1, 64, 3, 28, "relu", True)
    assert ops[1].name == "layer1.0.conv1"
    assert ops[2].act == "none" and ops[2].bn  # conv2 has no activation before the add
    adds = [op for op in ops if op.kind == "add"]
    assert len(adds) == 8 and all(op.act == "relu" for op in adds)
    assert sum(op.kind == "conv" for op in ops) == 20  # 17 3x3 + 3 downsample 1x1
    assert ops[-1].kind == "linear" and (ops[-1].cin, ops[-1].cout) == (512, 10)


def test_depthwise_and_macs():
    ops = extract_ops(create_model("mobilenet_v2"), (1, 28, 28))
    dw = [op for op in ops if op.kind == "dwconv"]
    assert dw and all(op.cin == op.cout == op.groups for op in dw)
    conv = OpSpec("conv", "c", 16, 32, kernel=3, stride=2, hw=28)
    assert conv.hw_out == 14 and conv.macs == 9 * 16 * 32 * 14 * 14
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    counted = total_macs(extract_ops(model, (3, 8, 8)))
    assert counted == 9 * 3 * 8 * 64


def test_unsupported_op_named_in_error():
    class Roll(nn.Module):
        def forward(self, x):
            return torch.roll(x, 1, 2)

    with pytest.raises(UnsupportedModelError, match="roll"):
        extract_ops(Roll(), (1, 4, 4))
    assert extract_ops(Roll(), (1, 4, 4), strict=False) == []


def test_concat_and_channel_shuffle_are_priced_ops():
    from pluto.cost.units import build_unit
    from pluto.models import create_model

    class Cat(nn.Module):
        def forward(self, x):
            return torch.cat([x, x], 1)

    (op,) = extract_ops(Cat(), (3, 8, 8))
    assert (op.kind, op.cout, op.hw) == ("concat", 6, 8)
    ops = extract_ops(create_model("shufflenet_v2_x0_5", 10, 1, 28).eval(), (1, 28, 28))
    kinds = {o.kind for o in ops}
    assert {"concat", "shuffle"} <= kinds
    for o in ops:
        if o.kind in ("concat", "shuffle"):
            module, inputs = build_unit(o)
            assert module(*inputs).shape[1] == o.cout - (o.cout % 2 if o.kind == "shuffle" else 0)


def test_untraceable_model_is_a_clean_error():
    class Dynamic(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(UnsupportedModelError, match="trace"):
        extract_ops(Dynamic(), (1, 4, 4))
