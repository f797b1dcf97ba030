"""Coupling kinds on tiny hand-made models: each must group channels correctly and prune exactly."""
import pytest
import torch
from torch import nn

from pluto.decisions.channels import DependencyGraph
from pluto.errors import UnsupportedModelError

from conftest import gated_vs_materialized


class AddNet(nn.Module):
    """Residual add: conv1's outputs and conv2's outputs are summed, so they form one group."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        a = torch.relu(self.bn1(self.conv1(x)))
        b = self.bn2(self.conv2(a))
        y = self.conv3(torch.relu(a + b))
        return self.fc(y.mean((2, 3)))


class ConcatNet(nn.Module):
    """Concatenation: the consumer's input channels are offsets into two producers."""

    def __init__(self):
        super().__init__()
        self.left, self.right = nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(3, 7, 1)
        self.bn = nn.BatchNorm2d(12)
        self.mix = nn.Conv2d(12, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        y = self.bn(torch.cat([self.left(x), self.right(x)], dim=1))
        y = nn.functional.adaptive_avg_pool2d(torch.relu(self.mix(y)), 4)
        return self.fc(torch.flatten(y, 1))  # linear after flatten: 16 features per channel


class DWNet(nn.Module):
    """Depthwise (in/out tied), depthwise with multiplier 2, and a grouped conv (groups=2)."""

    def __init__(self):
        super().__init__()
        self.pw1 = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.dw2 = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(16, 12, 3, padding=1, groups=2)
        self.bn = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        y = torch.relu(self.dw(self.pw1(x)))
        y = self.bn(self.grouped(self.dw2(y)))
        return self.fc(y.mean((2, 3)))


class SENet(nn.Module):
    """Squeeze-excitation: the per-channel scale (fc2's outputs) is tied to the gated tensor's channels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.out = nn.Conv2d(16, 8, 1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(y.mean((2, 3), keepdim=True)))))
        return self.head(self.out(y * s).mean((2, 3)))


def channel_shuffle(x, groups: int):
    b, c, h, w = x.size()
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


class ShuffleNet(nn.Module):
    """ShuffleNet-v2 unit: chunk, branch, concat, channel shuffle (split sizes follow the pruned width)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branch = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU(),
                                    nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1))
        self.head = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x1, x2 = self.stem(x).chunk(2, dim=1)
        y = channel_shuffle(torch.cat((x1, self.branch(x2)), dim=1), 2)
        return self.fc(self.head(y).mean((2, 3)))


MODELS = [AddNet, ConcatNet, DWNet, SENet, ShuffleNet]


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("fraction", [0.3, 0.7])
def test_materialized_equals_gated(cls, fraction):
    torch.manual_seed(0)
    model, x = cls(), torch.randn(2, 3, 8, 8)
    ref, out, small = gated_vs_materialized(model, x, fraction, seed=1)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for n, p in model.named_parameters() if "gates" not in n)


def _group_with(graph, producer):
    return [g for g in graph.groups if producer in g.producers]


def test_add_ties_both_summands():
    graph = DependencyGraph.build(AddNet().eval(), torch.randn(1, 3, 8, 8))
    (g,) = _group_with(graph, "conv1")
    assert set(g.producers) >= {"conv1", "conv2"} and "conv3" in g.consumers and {"bn1", "bn2"} <= set(g.norms)
    assert g.size == 8
    assert not _group_with(graph, "fc"), "the classifier output is protected"


def test_concat_offsets_and_flatten():
    graph = DependencyGraph.build(ConcatNet().eval(), torch.randn(1, 3, 8, 8))
    left, right = _group_with(graph, "left")[0], _group_with(graph, "right")[0]
    assert left.id != right.id and left.size == 5 and right.size == 7
    mix_in = graph.layers["mix"].in_index
    assert mix_in[:5].tolist() == list(range(left.offset, left.offset + 5))
    assert mix_in[5:].tolist() == list(range(right.offset, right.offset + 7))
    fc_in = graph.layers["fc"].in_index  # 16 features per mix channel
    mix_group = _group_with(graph, "mix")[0]
    assert fc_in.view(6, 16).eq(torch.arange(mix_group.offset, mix_group.offset + 6)[:, None]).all()


def test_depthwise_and_grouped():
    graph = DependencyGraph.build(DWNet().eval(), torch.randn(1, 3, 8, 8))
    (g,) = _group_with(graph, "pw1")
    # depthwise ties in and out; dw2 ties each input to its 2 outputs, and `grouped` ties position j of its
    # first group (dw2 outputs 0..7 = inputs 0..3) to position j of its second (inputs 4..7): 4 channels remain
    assert "dw" in g.producers and g.size == 4
    pw1 = graph.layers["pw1"].out_index
    assert pw1[:4].eq(pw1[4:]).all()
    assert "dw2" in g.producers  # multiplier 2: both outputs of a group follow its input
    dw2_out = graph.layers["dw2"].out_index
    assert dw2_out.view(8, 2)[:, 0].eq(dw2_out.view(8, 2)[:, 1]).all()
    grouped = _group_with(graph, "grouped")[0]  # 6 positions per group, tied across the 2 groups
    assert grouped.size == 6
    out = graph.layers["grouped"].out_index.view(2, 6)
    assert out[0].eq(out[1]).all()


def test_se_scale_tied_to_channels():
    graph = DependencyGraph.build(SENet().eval(), torch.randn(1, 3, 8, 8))
    (g,) = _group_with(graph, "conv")
    assert "fc2" in g.producers and "out" in g.consumers and "fc1" in g.consumers
    squeeze = _group_with(graph, "fc1")[0]
    assert squeeze.size == 4 and squeeze.id != g.id


def test_shuffle_ties_positions_across_pieces():
    graph = DependencyGraph.build(ShuffleNet().eval(), torch.randn(1, 3, 8, 8))
    stem = graph.layers["stem"].out_index
    assert stem[:4].eq(stem[4:]).all(), "chunk(2) halves must keep the same positions"


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Branchy()

    def forward(self, x):
        return self.inner(x)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return self.conv(x)
        return x


def test_untraceable_names_module():
    with pytest.raises(UnsupportedModelError, match="'inner'.*Branchy"):
        DependencyGraph.build(Untraceable(), torch.randn(1, 3, 8, 8))


class UnknownOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 5, 1), nn.Conv2d(5, 2, 1)

    def forward(self, x):
        y = torch.cumsum(self.a(x), dim=1)  # mixes channels: unknown to the rules
        return self.c(self.b(y))


def test_unknown_op_protects_its_inputs():
    graph = DependencyGraph.build(UnknownOp().eval(), torch.randn(1, 3, 4, 4))
    assert not _group_with(graph, "a")
    assert _group_with(graph, "b")[0].size == 5
    assert not _group_with(graph, "c"), "output protected"


def test_protect_argument_and_bad_name():
    graph = DependencyGraph.build(AddNet().eval(), torch.randn(1, 3, 8, 8), protect=["conv3"])
    assert not _group_with(graph, "conv3")
    with pytest.raises(UnsupportedModelError, match="nope"):
        DependencyGraph.build(AddNet().eval(), torch.randn(1, 3, 8, 8), protect=["nope"])


def test_bad_input_shape_is_clear():
    with pytest.raises(UnsupportedModelError, match="example_input"):
        DependencyGraph.build(AddNet().eval(), torch.randn(1, 5, 8, 8))


def test_macs_count_matches_layers():
    model = AddNet().eval()
    graph = DependencyGraph.build(model, torch.randn(1, 3, 8, 8))
    expect = 64 * (8 * 3 * 9) + 64 * (8 * 8 * 9) + 64 * (6 * 8) + 6 * 4
    assert graph.macs() == pytest.approx(expect, rel=0.01)
    keep = torch.ones(graph.num_channels, dtype=torch.bool)
    g = _group_with(graph, "conv1")[0]
    keep[g.offset:g.offset + 4] = False  # half of the 8 residual channels
    expect_half = 64 * (4 * 3 * 9) + 64 * (4 * 4 * 9) + 64 * (6 * 4) + 6 * 4
    assert graph.macs(keep) == pytest.approx(expect_half, rel=0.01)


class LayerNorm2d(nn.LayerNorm):
    """Channels-first LayerNorm as in ConvNeXt (traced through by torch.fx)."""

    def forward(self, x):
        return nn.functional.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                                        self.eps).permute(0, 3, 1, 2)


class LayerNormNet(nn.Module):
    """ConvNeXt-like: channels-first and channels-last LayerNorms, a layer-scale parameter, a residual add."""

    def __init__(self):
        super().__init__()
        self.stem, self.norm = nn.Conv2d(3, 8, 2, 2), LayerNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.ln = nn.LayerNorm(8)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.layer_scale = nn.Parameter(torch.rand(8, 1, 1) + 0.5)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.norm(self.stem(x))
        y = self.ln(self.dw(x).permute(0, 2, 3, 1))
        y = self.fc2(torch.nn.functional.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        return self.head((x + self.layer_scale * y).mean((2, 3)))


def test_layernorm_and_layer_scale_prune_with_the_stream():
    graph = DependencyGraph.build(LayerNormNet().eval(), torch.randn(1, 3, 8, 8))
    (g,) = _group_with(graph, "stem")
    assert {"norm", "ln", "layer_scale"} <= set(g.norms) and "fc2" in g.producers and "dw" in g.producers
    assert graph.layers["layer_scale"].kind == "param" and graph.layers["layer_scale"].dim == 0
    for seed in range(3):
        torch.manual_seed(seed)
        ref, out, small = gated_vs_materialized(LayerNormNet(), torch.randn(2, 3, 8, 8), 0.5, seed)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
        assert small.layer_scale.shape[0] == small.norm.weight.shape[0] == small.ln.normalized_shape[0] < 8


def test_build_restores_train_mode_and_keeps_bn_stats():
    model = AddNet().train()
    before = model.bn1.running_mean.clone()
    DependencyGraph.build(model, torch.randn(4, 3, 8, 8))
    assert model.training and model.bn1.training
    torch.testing.assert_close(model.bn1.running_mean, before)
