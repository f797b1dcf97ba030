"""Gates: keep-probabilities, expected channels under torch.fx names, modes, removal, coexistence."""
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from pluto.decisions.channels import DependencyGraph, attach_gates, detach_gates, width_report
from pluto.errors import ConfigError
from pluto.materialize.prune import materialize

from test_graph import AddNet, SENet


def _build(model=None):
    model = (model or AddNet()).eval()
    x = torch.randn(2, 3, 8, 8)
    graph = DependencyGraph.build(model, x)
    return model, x, graph, attach_gates(model, graph)


def test_keep_probabilities_and_expected_channels_use_fx_names():
    model, x, graph, gates = _build()
    probs = gates.keep_probabilities()
    assert set(probs) == {g.id for g in graph.groups}
    assert all(p.shape == (g.size,) for g, p in zip(graph.groups, probs.values()))
    expected = gates.expected_channels()
    names = {n.target if n.op == "call_module" else n.name for n in torch.fx.symbolic_trace(AddNet()).graph.nodes}
    assert set(expected) <= names
    assert {"conv1", "conv2", "conv3", "bn1", "add"} <= set(expected)
    res = probs[[g for g in graph.groups if "conv1" in g.producers][0].id]
    cin, cout = expected["conv3"]
    assert cin.dim() == 0 and torch.allclose(cin, res.sum())
    assert torch.allclose(expected["add"][1], res.sum())
    assert expected["conv1"][0].item() == pytest.approx(3.0)  # the network input is never pruned


def test_expected_channels_are_differentiable():
    model, x, graph, gates = _build()
    loss = sum(o for _, o in gates.expected_channels().values()) + gates.expected_macs() * 1e-6
    loss.backward()
    assert all(l.grad is not None and l.grad.abs().sum() > 0 for l in gates.logits)


def test_soft_mode_trains_weights_and_gates():
    model, x, graph, gates = _build()
    gates.set_mode("soft")
    model(x).sum().backward()
    assert model.conv1.weight.grad is not None
    assert any(l.grad is not None and l.grad.abs().sum() > 0 for l in gates.logits)


def test_ste_mode_forward_is_hard_backward_is_soft():
    model, x, graph, gates = _build()
    keep = torch.zeros(graph.num_channels, dtype=torch.bool)
    keep[::2] = True
    gates.set_keep(keep, margin=0.5)
    gates.set_mode("ste")
    ste_out = model(x)
    ste_out.sum().backward()
    assert any(l.grad is not None and l.grad.abs().sum() > 0 for l in gates.logits)
    gates.set_mode("hard")
    with torch.no_grad():
        torch.testing.assert_close(ste_out.detach(), model(x))


def test_consumer_masks_gathered_at_once_equal_each_consumers_own_gather():
    """One gather for all consumers per forward pass reads, and back-propagates, what a gather per consumer did."""
    from pluto.decisions.channels.gates import _InputMask, _LayerNormMask

    model, x, graph, gates = _build(SENet())
    with torch.no_grad():
        for logit in gates.logits:
            logit.copy_(torch.randn_like(logit))
    hooks = [h for m in model.modules() for h in [*m._forward_pre_hooks.values(), *m._forward_hooks.values()]
             if isinstance(h, (_InputMask, _LayerNormMask))]
    assert len(hooks) >= 2 and sorted(h.slot for h in hooks) == list(range(len(hooks)))
    weights = [torch.randn(getattr(gates, h.buffer).numel()) for h in hooks]
    batched = sum((gates.consumer_mask(h.slot) * w).sum() for h, w in zip(hooks, weights))
    own = sum((gates.forward_mask()[getattr(gates, h.buffer)] * w).sum() for h, w in zip(hooks, weights))
    torch.testing.assert_close(batched, own)
    g_batched = torch.autograd.grad(batched, list(gates.logits), allow_unused=True)
    g_own = torch.autograd.grad(own, list(gates.logits), allow_unused=True)
    for a, b in zip(g_batched, g_own):
        torch.testing.assert_close(a, b)


def test_hard_keeps_at_least_one_channel_per_group():
    model, x, graph, gates = _build()
    gates.set_keep(torch.zeros(graph.num_channels, dtype=torch.bool))
    assert all(int(k.sum()) == 1 for k in gates.hard().values())
    small = materialize(model)
    assert small(x).shape == (2, 4)


def test_remove_restores_model_and_materialize_leaves_original():
    model = AddNet().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        before = model(x)
    graph = DependencyGraph.build(model, x)
    gates = attach_gates(model, graph)
    gates.set_keep(torch.rand(graph.num_channels) < 0.5)
    gates.set_mode("hard")
    small = materialize(model)
    assert not hasattr(small, "channel_gates")
    assert not any(m._forward_pre_hooks for m in small.modules())
    assert [n for n, _ in small.named_modules()] == [n for n, _ in model.named_modules() if "channel_gates" not in n]
    assert model.conv1.out_channels == 8, "materialize copies"
    detach_gates(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)
    assert not hasattr(model, "channel_gates")


def test_gates_are_a_submodule_with_state():
    model, x, graph, gates = _build()
    assert model.channel_gates is gates
    assert any(k.startswith("channel_gates.logits") for k in model.state_dict())
    opt = torch.optim.SGD(gates.parameters(), lr=0.1)
    assert len(opt.param_groups[0]["params"]) == len(graph.groups)


def test_set_mode_rejects_unknown():
    _, _, _, gates = _build()
    with pytest.raises(ConfigError, match="soft"):
        gates.set_mode("banana")


class Scale(nn.Module):
    def forward(self, w):
        return w * 1.5


def test_coexists_with_parametrizations_and_pre_hooks():
    model = SENet().eval()
    parametrize.register_parametrization(model.conv, "weight", Scale())
    parametrize.register_parametrization(model.out, "weight", Scale())
    calls = []
    model.out.register_forward_pre_hook(lambda m, a: calls.append(1))
    x = torch.randn(2, 3, 8, 8)
    graph = DependencyGraph.build(model, x)
    gates = attach_gates(model, graph)
    gates.set_keep(torch.rand(graph.num_channels, generator=torch.Generator().manual_seed(0)) < 0.5)
    gates.set_mode("hard")
    with torch.no_grad():
        ref = model(x)
        small = materialize(model)
        out = small(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert parametrize.is_parametrized(small.conv, "weight") and small.conv.weight.shape[0] < 16
    assert calls, "the other pre-hook still runs"


def test_width_report():
    model, x, graph, gates = _build()
    df = width_report(model)
    assert list(df.columns) == ["group", "layers", "channels_before", "channels_after", "expected_channels"]
    assert len(df) == len(graph.groups)
    assert (df.channels_after <= df.channels_before).all()
    assert df.expected_channels.sum() == pytest.approx(0.95 * graph.num_channels, rel=1e-4)
    with pytest.raises(ConfigError, match="attach_gates"):
        width_report(AddNet())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gates_follow_the_model_to_cuda():
    model = AddNet().eval().cuda()
    x = torch.randn(2, 3, 8, 8, device="cuda")
    graph = DependencyGraph.build(model, x)
    gates = attach_gates(model, graph)
    gates.set_mode("hard")
    assert gates.logits[0].is_cuda
    small = materialize(model)
    torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)
