"""Materialized models: real smaller tensors, BN stats sliced, importance baselines, ONNX export."""
import numpy as np
import pytest
import torch

from pluto.decisions.channels import DependencyGraph, channel_importance, prune_by_importance
from pluto.errors import ConfigError, InfeasibleConstraintError

from test_graph import AddNet, ConcatNet, DWNet


def test_bn_stats_and_weights_are_sliced():
    model = AddNet().eval()
    with torch.no_grad():
        model.bn1.running_mean.copy_(torch.arange(8.0))
    x = torch.randn(2, 3, 8, 8)
    graph = DependencyGraph.build(model, x)
    small = prune_by_importance(model, graph, ratio=0.5)
    assert small.conv1.weight.shape == (4, 3, 3, 3) and small.bn1.running_mean.shape == (4,)
    assert set(small.bn1.running_mean.tolist()) <= set(range(8))
    assert small.conv3.weight.shape == (3, 4, 1, 1) and small.fc.weight.shape == (4, 3)


@pytest.mark.parametrize("importance", ["l1", "l2", "bn"])
def test_importance_keeps_the_strong_channels(importance):
    model = AddNet().eval()
    with torch.no_grad():
        for m in (model.conv1, model.conv2, model.conv3):
            m.weight.mul_(0.01)
            m.weight[:2].mul_(1000.0)  # channels 0 and 1 are the strong ones
        model.bn1.weight.copy_(torch.tensor([5.0, 5.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]))
        model.bn2.weight.copy_(model.bn1.weight)
    graph = DependencyGraph.build(model, torch.randn(1, 3, 8, 8))
    score = channel_importance(model, graph, importance)
    g = [g for g in graph.groups if "conv1" in g.producers][0]
    top = torch.topk(score[g.offset:g.offset + g.size], 2).indices
    assert sorted(top.tolist()) == [0, 1]


def test_taylor_needs_gradients():
    model = AddNet()
    x = torch.randn(2, 3, 8, 8)
    graph = DependencyGraph.build(model.eval(), x)
    with pytest.raises(ConfigError, match="backward"):
        prune_by_importance(model, graph, importance="taylor")
    model(x).sum().backward()
    small = prune_by_importance(model, graph, ratio=0.5, importance="taylor")
    assert small(x).shape == (2, 4)


def test_macs_reduction_target_and_infeasible():
    model = ConcatNet().eval()
    x = torch.randn(1, 3, 8, 8)
    graph = DependencyGraph.build(model, x)
    base = graph.macs()
    small = prune_by_importance(model, graph, macs_reduction=0.5)
    after = DependencyGraph.build(small, x).macs()
    assert 0.35 <= 1 - after / base <= 0.65
    with pytest.raises(InfeasibleConstraintError, match="infeasible"):
        prune_by_importance(model, graph, macs_reduction=0.99)


def test_onnx_export_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = DWNet().eval()
    x = torch.randn(2, 3, 8, 8)
    graph = DependencyGraph.build(model, x)
    small = prune_by_importance(model, graph, ratio=0.5)
    path = tmp_path / "small.onnx"
    torch.onnx.export(small, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(y, small(x).numpy(), rtol=1e-4, atol=1e-5)
