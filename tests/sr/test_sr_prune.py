"""SR models (PixelShuffle, global and long skips) prune with gated == materialized, in groups of r^2."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pluto.decisions.channels import DependencyGraph, attach_gates
from pluto.materialize.prune import materialize
from pluto.models import create_model


def _random_keep(graph, fraction, seed):
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(graph.num_channels, generator=gen) < fraction
    for g in graph.groups:
        keep[g.offset] = True
    return keep


def _gated_vs_materialized(model, x, fraction=0.5, seed=0):
    model.eval()
    graph = DependencyGraph.build(model, x)
    gates = attach_gates(model, graph)
    gates.set_keep(_random_keep(graph, fraction, seed))
    gates.set_mode("hard")
    with torch.no_grad():
        ref = model(x)
        small = materialize(model)
        out = small(x)
    return graph, ref, out, small


class FunctionalShuffle(nn.Module):
    """F.pixel_shuffle in the forward and a conv after it at the output resolution (x3)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.up = nn.Conv2d(16, 8 * 9, 3, padding=1)
        self.out = nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x):
        return self.out(F.pixel_shuffle(self.up(torch.relu(self.conv1(x))), 3))


@pytest.mark.parametrize("name,kwargs", [("edsr", {}), ("edsr", {"residual": "none", "res_scale": 0.1}),
                                         ("edsr", {"scale": 3, "blocks": 2}), ("espcn", {}),
                                         ("espcn", {"residual": "bicubic"})])
@pytest.mark.parametrize("seed", [0, 1])
def test_sr_models_gated_equal_materialized(name, kwargs, seed):
    model = create_model(name, 0, 1, 12, **kwargs)
    x = torch.rand(2, 1, 12, 12)
    graph, ref, out, small = _gated_vs_materialized(model, x, 0.5, seed)
    assert out.shape == ref.shape == (2, 1, 12 * model.scale, 12 * model.scale)
    assert torch.allclose(ref, out, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


def test_functional_pixel_shuffle_prunes_in_groups_of_r2():
    model = FunctionalShuffle()
    x = torch.rand(2, 1, 6, 6)
    graph, ref, out, small = _gated_vs_materialized(model, x, 0.5, 3)
    assert torch.allclose(ref, out, atol=1e-5)
    assert small.up.out_channels == 9 * small.out.in_channels and small.out.in_channels < 8


def test_edsr_groups_upsampler_global_skip_and_protected_output():
    model = create_model("edsr", 0, 1, 14, width=16, blocks=2)
    graph = DependencyGraph.build(model, torch.rand(1, 1, 14, 14))
    skip = [g for g in graph.groups if "head" in g.producers][0]
    # the global skip ties the head, every block's last conv and the body-end conv
    assert set(skip.producers) == {"head", "body.0.conv2", "body.1.conv2", "body_end"}
    up = [g for g in graph.groups if "upsampler.0" in g.producers][0]
    assert up.size == 16 and up.consumers == ["tail"]
    out_index = graph.layers["upsampler.0"].out_index
    assert out_index.view(16, 4).eq(out_index.view(16, 4)[:, :1]).all()  # r^2 = 4 channels per gate
    assert (graph.layers["tail"].out_index < 0).all()  # the image output is never pruned


def test_espcn_last_conv_is_protected():
    model = create_model("espcn", 0, 1, 14)
    graph = DependencyGraph.build(model, torch.rand(1, 1, 14, 14))
    assert (graph.layers["conv3"].out_index < 0).all()
    assert sorted(g.size for g in graph.groups) == [32, 64]


def test_pruned_edsr_exports_to_onnx_with_parity(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = create_model("edsr", 0, 1, 14, width=16, blocks=2)
    x = torch.rand(1, 1, 14, 14)
    _, _, _, small = _gated_vs_materialized(model, x, 0.5, 0)
    path = tmp_path / "edsr.onnx"
    torch.onnx.export(small.eval(), (x,), str(path), input_names=["x"], dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = small(x).numpy()
    assert abs(got - want).max() < 1e-4
