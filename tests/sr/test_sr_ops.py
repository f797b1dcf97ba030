"""The cost tables' vocabulary covers SR models: pixel_shuffle and upsample ops, convs at the output resolution."""
import pytest
import torch
from torch import nn

from pluto.cost.ops import KINDS, OpSpec, extract_ops
from pluto.cost.units import build_unit
from pluto.errors import TableError
from pluto.models import create_model


def test_edsr_ops_include_pixel_shuffle_upsample_and_output_resolution_conv():
    ops = {op.name: op for op in extract_ops(create_model("edsr", 0, 1, 14, width=16, blocks=2), (1, 14, 14))}
    shuffle = ops["upsampler.1"]
    assert (shuffle.kind, shuffle.cin, shuffle.cout, shuffle.kernel, shuffle.hw, shuffle.hw_out) == \
        ("pixel_shuffle", 16, 16, 2, 14, 28)
    assert ops["upsampler.0"].cout == 64 and ops["upsampler.0"].macs == 9 * 16 * 64 * 14 * 14
    assert ops["tail"].hw == 28 and ops["tail"].macs == 9 * 16 * 1 * 28 * 28  # conv at the output resolution
    up = ops["interpolate"]
    assert (up.kind, up.variant, up.kernel, up.hw, up.cout) == ("upsample", "bilinear", 2, 14, 1)
    assert {"pixel_shuffle", "upsample"} <= set(KINDS)


def test_nn_upsample_and_non_integer_resize():
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Upsample(scale_factor=3, mode="bicubic"))
    op = extract_ops(net, (1, 10, 10))[-1]
    assert (op.kind, op.variant, op.kernel, op.hw) == ("upsample", "bicubic", 3, 10)
    odd = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Upsample(size=(15, 15), mode="bilinear"))
    with pytest.raises(Exception, match="only integer upsampling"):
        extract_ops(odd, (1, 10, 10))


@pytest.mark.parametrize("op", [OpSpec("pixel_shuffle", "p", 8, 8, kernel=2, hw=14),
                                OpSpec("upsample", "u", 4, 4, kernel=2, hw=14, variant="bilinear"),
                                OpSpec("upsample", "n", 4, 4, kernel=3, hw=7, variant="nearest")])
def test_units_for_new_kinds_produce_the_output_resolution(op):
    module, inputs = build_unit(op)
    out = module(*inputs)
    assert out.shape == (1, op.cout, op.hw_out, op.hw_out)
    assert op.with_channels(3, 3).cin == op.with_channels(3, 3).cout == 3


def test_a_table_without_sr_entries_says_what_to_profile():
    from pluto.cost.table import LatencyTable

    table = LatencyTable.load("latency_tables/cpu_ort")  # profiled before the SR kinds existed
    with pytest.raises(TableError, match="pixel_shuffle.*space config"):
        table.lookup(OpSpec("pixel_shuffle", "upsampler.1", 16, 16, kernel=2, hw=14), "latency_ms", "fp32")


def test_sr_space_config_lists_the_new_kinds():
    from pluto.cost.space import ProfileSpace

    space = ProfileSpace.load("configs/space/fmnist_sr.yaml")
    kinds = {(op.kind, op.hw, op.variant) for op in space.unit_ops()}
    assert ("pixel_shuffle", 14, "") in kinds and ("upsample", 14, "bilinear") in kinds
    assert any(k == "conv" and hw == 28 for k, hw, _ in kinds)
