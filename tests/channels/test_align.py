"""Widths snapped to the channel multiple a runtime runs fast (``round_to``): counts, graph validity, equality."""
from types import SimpleNamespace

import pytest
import torch

from pluto.decisions.channels import DependencyGraph, attach_gates, channel_importance, prune_by_importance
from pluto.decisions.channels.importance import alignment, keep_for_macs, keep_top, snap_count, snap_keep
from pluto.errors import ConfigError
from pluto.materialize.prune import materialize
from pluto.models import create_model

from test_graph import AddNet, ConcatNet, DWNet


class _Table:
    """What ``round_to='table'`` reads of a LatencyTable."""

    align = 8


def test_snap_count_nearest_multiple_never_zero_never_above_size():
    assert [snap_count(k, 64, 8) for k in (1, 4, 5, 11, 12, 13, 60, 64)] == [8, 8, 8, 8, 16, 16, 64, 64]
    assert snap_count(0.2, 64, 8) == 8  # never 0
    assert snap_count(23, 20, 8) == 20  # never above the group size
    assert snap_count(19, 20, 8) == 20 and snap_count(17, 20, 8) == 16  # the unpruned size is a candidate
    assert snap_count(3, 6, 8) == 6 and snap_count(1, 8, 8) == 8  # a group no larger than the multiple keeps its size
    assert [snap_count(k, 10, 1) for k in (0, 0.4, 3.6, 12)] == [1, 1, 4, 10]  # multiple 1: round, clipped to [1, size]
    for size in range(1, 70):
        for k in range(1, size + 1):
            s = snap_count(k, size, 8)
            assert 1 <= s <= size and (s % 8 == 0 or s == size)
            assert snap_count(s, size, 8) == s  # snapping is idempotent


def test_alignment_resolves_round_to():
    assert alignment(None) == 1 and alignment(4) == 4
    assert alignment("table", _Table()) == 8 and alignment("table") == 1
    for bad in (0, -8, "eight", 2.0, True):
        with pytest.raises(ConfigError, match="round_to"):
            alignment(bad)


def _group_counts(graph, keep):
    return [(g.size, int(keep[g.offset:g.offset + g.size].sum())) for g in graph.groups]


@pytest.mark.parametrize("ratio", [0.0, 0.36, 0.5, 0.99])
def test_keep_top_counts_are_multiples(ratio):
    model = create_model("resnet18", in_channels=1, input_size=28).eval()
    graph = DependencyGraph.build(model, torch.randn(1, 1, 28, 28))
    keep = keep_top(graph, channel_importance(model, graph), ratio, round_to=8)
    for size, k in _group_counts(graph, keep):
        assert 1 <= k <= size and (k % 8 == 0 or k == size), (size, k, ratio)
    if ratio == 0.99:
        assert all(k == min(8, size) for size, k in _group_counts(graph, keep))


def _gated_equals_materialized(model, x, keep, graph):
    gates = attach_gates(model, graph)
    gates.set_keep(keep)
    gates.set_mode("hard")
    with torch.no_grad():
        ref = model(x)
        out = materialize(model)(x)
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("name,shape,multiple", [
    ("addnet", (2, 3, 8, 8), 4), ("concatnet", (2, 3, 8, 8), 4), ("dwnet", (2, 3, 8, 8), 4),
    ("resnet18", (2, 1, 28, 28), 8), ("mobilenet_v2", (2, 1, 28, 28), 8)])
def test_round_to_keeps_the_graph_valid_and_gated_equals_materialized(name, shape, multiple):
    nets = {"addnet": AddNet, "concatnet": ConcatNet, "dwnet": DWNet}
    model = (nets[name]() if name in nets else create_model(name, in_channels=shape[1], input_size=shape[-1])).eval()
    x = torch.randn(*shape)
    graph = DependencyGraph.build(model, x)
    keep = keep_top(graph, channel_importance(model, graph), 0.4, round_to=multiple)
    small = prune_by_importance(model, graph, ratio=0.4, round_to=multiple)
    assert DependencyGraph.build(small, x).num_channels == int(keep.sum())
    assert _gated_equals_materialized(model, x, keep, graph) < 1e-5
    if name in ("resnet18", "mobilenet_v2"):  # every pruned conv width is a multiple (the stem input is not pruned)
        for m in small.modules():
            if isinstance(m, torch.nn.Conv2d):
                assert m.out_channels % multiple == 0, (name, m)


def test_prune_by_importance_snaps_by_default_with_a_table_only():
    model = create_model("small_cnn", width=0.75).eval()  # widths 24-24-48-48-96
    x = torch.randn(1, 1, 28, 28)
    graph = DependencyGraph.build(model, x)
    widths = lambda m: [c.out_channels for c in m.modules() if isinstance(c, torch.nn.Conv2d)]  # noqa: E731
    assert widths(prune_by_importance(model, graph, ratio=0.36)) == [15, 15, 31, 31, 61]
    assert widths(prune_by_importance(model, graph, ratio=0.36, table=_Table())) == [16, 16, 32, 32, 64]
    assert widths(prune_by_importance(model, graph, ratio=0.36, round_to=None, table=_Table())) == [15, 15, 31, 31, 61]
    assert widths(prune_by_importance(model, graph, ratio=0.05, round_to=8)) == [24, 24, 48, 48, 88]


def test_macs_target_with_round_to():
    model = create_model("resnet18", in_channels=1, input_size=28).eval()
    x = torch.randn(1, 1, 28, 28)
    graph = DependencyGraph.build(model, x)
    score = channel_importance(model, graph)
    keep = keep_for_macs(graph, score, 0.5, round_to=8)
    assert all(k % 8 == 0 for _, k in _group_counts(graph, keep))
    assert 0.45 <= 1 - graph.macs(keep) / graph.macs() <= 0.6


def test_materialize_snaps_with_a_table_and_snapped_gates_make_it_exact():
    model = create_model("mobilenet_v2", in_channels=1, input_size=28).eval()
    x = torch.randn(2, 1, 28, 28)
    graph = DependencyGraph.build(model, x)
    gates = attach_gates(model, graph)
    keep = torch.rand(graph.num_channels, generator=torch.Generator().manual_seed(0)) < 0.6
    for g in graph.groups:
        keep[g.offset] = True
    gates.set_keep(keep)
    gates.set_mode("hard")
    unsnapped = materialize(model)
    snapped = materialize(model, table=_Table())
    assert any(m.out_channels % 8 for m in unsnapped.modules() if isinstance(m, torch.nn.Conv2d))
    assert all(m.out_channels % 8 == 0 for m in snapped.modules() if isinstance(m, torch.nn.Conv2d))
    keep = snap_keep(graph, gates.hard_flat(), gates.flat_probabilities(), 8)
    gates.set_keep(keep)  # snap the gates themselves: materialize is then a no-op snap and exact
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(materialize(model, table=_Table())(x), materialize(model)(x))
        assert float((materialize(model)(x) - ref).abs().max() / ref.abs().max()) < 1e-5


def test_snap_keep_drops_the_least_and_adds_the_most_important():
    model = AddNet().eval()
    graph = DependencyGraph.build(model, torch.randn(1, 3, 8, 8))
    g = graph.groups[0]
    score = torch.zeros(graph.num_channels)
    score[g.offset:g.offset + g.size] = torch.arange(g.size, dtype=torch.float) + 100.0
    keep = torch.ones(graph.num_channels, dtype=torch.bool)
    keep[g.offset:g.offset + g.size] = torch.tensor([True, True, True, False, False, False, False, False])[:g.size]
    out = snap_keep(graph, keep, score, 4)[g.offset:g.offset + g.size]  # 3 kept -> 4: add the best removed one
    assert out.tolist()[:3] == [True, True, True] and int(out.sum()) == 4 and bool(out[g.size - 1])
    keep[g.offset:g.offset + g.size] = torch.tensor([True, True, True, True, True, False, False, False])[:g.size]
    out = snap_keep(graph, keep, score, 4)[g.offset:g.offset + g.size]  # 5 kept -> 4: drop the weakest kept one
    assert out.tolist() == [False, True, True, True, True, False, False, False][:g.size]


def _search_decisions():
    from pluto.cost.model import CostModel
    from pluto.optimizer.decisions import attach

    model = create_model("small_cnn")
    shape = (1, 1, 28, 28)
    decisions = attach(model, torch.zeros(shape), prune=True, quantize=False, bits=(), gate_init="l1")
    gates = decisions.gates
    with torch.no_grad():  # a search that left odd widths: group i keeps 32 - 3 - i ... channels
        for i, logit in enumerate(gates.logits):
            logit[: 3 + 2 * i] = -4.0
    return decisions, CostModel(model, shape, None)


def test_round_gates_snaps_hard_counts():
    from pluto.optimizer.decisions import gate_counts, round_gates

    decisions, _ = _search_decisions()
    gates = decisions.gates
    counts = gate_counts(gates)
    probs = {k: v.detach().clone() for k, v in gates.keep_probabilities().items()}
    assert any(int(c) % 8 for c in counts.values())
    for scale in (1.0, 0.37, 0.01):
        round_gates(gates, counts, probs, scale, round_to=8)
        for g in gates.graph.groups:
            k = int(gates.hard()[g.id].sum())
            assert k == snap_count(scale * counts[g.id], g.size, 8) and k % 8 == 0 and 8 <= k <= g.size
    round_gates(gates, counts, probs)  # round_to None: the plain rounding of before
    assert {g: int(k.sum()) for g, k in gates.hard().items()} == {g: int(round(c)) for g, c in counts.items()}


def test_projection_and_landing_with_round_to_meet_the_target_on_multiples():
    from pluto.optimizer.constraints import Constraint
    from pluto.optimizer.decisions import hard_channels, land_on_target, project_to_budget

    decisions, cost = _search_decisions()
    target = 0.3 * float(cost.expected("macs"))
    constraint = Constraint("macs", "macs", target)
    notes = project_to_budget(decisions, cost, [constraint], round_to=8)
    assert "still_violated" not in notes and notes["widths_round_to"] == 8
    assert all(int(k.sum()) % 8 == 0 for k in decisions.gates.hard().values())
    small = materialize(decisions.model)
    assert cost.of_model(small, "macs") == pytest.approx(float(cost.expected("macs", hard_channels(decisions.gates))))
    assert cost.of_model(small, "macs") <= target

    # land on the "measured" MACs of the built model, as the pipeline lands on measured latency
    measured = SimpleNamespace(metric="macs", target=target, source="table")
    measure = lambda: {"macs": cost.of_model(materialize(decisions.model), "macs")}  # noqa: E731
    notes = land_on_target(decisions, [measured], measure, band=(0.8, 1.0), round_to=8)
    assert all(int(k.sum()) % 8 == 0 for k in decisions.gates.hard().values())
    assert measure()["macs"] <= target and notes["measurements"]
