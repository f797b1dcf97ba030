"""Hard decisions: budget projection, straight-through gates, cost model reading the decisions."""
import pytest
import torch

from pluto.decisions.channels import DependencyGraph, attach_gates
from pluto.errors import TableError
from pluto.materialize.prune import materialize
from pluto.models import create_model
from pluto.optimizer.constraints import Constraint
from pluto.cost.expected import precision_key
from pluto.cost.model import CostModel
from pluto.optimizer.decisions import attach, gate_counts, hard_channels, harden, project_to_budget, violated

SHAPE = (1, 1, 28, 28)


def _pruned_decisions(keep: float = 0.95):
    model = create_model("small_cnn")
    cost = CostModel(model, SHAPE, None)
    return attach(model, torch.zeros(SHAPE), prune=True, quantize=False, bits=(), gate_init_keep=keep), cost


def test_expected_macs_follow_gate_probabilities_with_gradient():
    decisions, cost = _pruned_decisions()
    decisions.gates.set_mode("soft")
    macs = cost.expected("macs", decisions.channels())
    dense = cost.expected("macs")
    assert macs < dense
    macs.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in decisions.gates.parameters())


def test_straight_through_cost_prices_the_kept_channels_with_gradient():
    """In 'ste' mode the search prices the network the forward pass runs (p > 0.5), not sum p."""
    decisions, cost = _pruned_decisions()
    assert decisions.gates.mode == "ste"
    dense = float(cost.expected("macs"))
    macs = cost.expected("macs", decisions.channels())
    assert float(macs) == pytest.approx(dense)  # every p = 0.95 > 0.5: all channels run
    macs.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in decisions.gates.parameters())
    keep = decisions.gates.hard_flat().clone()
    keep[::2] = False
    decisions.gates.set_keep(keep)
    assert float(cost.expected("macs", decisions.channels())) == pytest.approx(
        float(cost.expected("macs", hard_channels(decisions.gates))))


def test_gates_ranked_by_importance_drop_the_weakest_channel_first():
    model = create_model("small_cnn")
    with torch.no_grad():
        model.features[0][0].weight[5].mul_(1e-3)  # channel 5 of the first conv is nearly dead
    decisions = attach(model, torch.zeros(SHAPE), prune=True, quantize=False, bits=(), gate_init="l1",
                       gate_init_spread=2.0)
    gates = decisions.gates
    group = next(g for g in gates.graph.groups if g.size == 32)
    logits = gates.logits[gates.graph.groups.index(group)].detach()
    assert int(logits.argmin()) == 5
    assert float(logits.mean()) == pytest.approx(float(torch.logit(torch.tensor(0.95))), abs=1e-4)
    assert float(logits.max() - logits.min()) == pytest.approx(4.0, abs=1e-4)


def test_projection_meets_target_and_materialized_model_matches_prediction():
    decisions, cost = _pruned_decisions()
    target = 0.3 * float(cost.expected("macs"))
    constraint = Constraint("macs", "macs", target)
    assert violated(decisions, cost, [constraint])
    notes = project_to_budget(decisions, cost, [constraint])
    assert 0 < notes["width_scale_to_fit_budget"] < 1 and "still_violated" not in notes
    predicted = float(cost.expected("macs", hard_channels(decisions.gates)))
    small = materialize(decisions.model)
    assert cost.of_model(small, "macs") == pytest.approx(predicted, rel=1e-6)
    assert cost.of_model(small, "macs") <= target


def test_straight_through_counts_are_the_hard_decision():
    decisions, _ = _pruned_decisions()
    gates = decisions.gates
    assert gates.mode == "ste"
    with torch.no_grad():
        gates.logits[0][:5] = -3.0  # five channels of group 0 below p = 0.5
    assert gate_counts(gates)[gates.graph.groups[0].id] == gates.graph.groups[0].size - 5


def test_harden_fixes_bits_and_prunes(tmp_path):
    model = create_model("small_cnn", width=0.5)
    cost = CostModel(model, SHAPE, None, "fp32")
    x = torch.randn(32, *SHAPE[1:])
    decisions = attach(model, x[:1], prune=True, quantize=True, bits=(4, 8), calibration=x)
    constraint = Constraint("size_bytes", "size_bytes", 0.2 * float(cost.expected("size_bytes")))
    final, trail = harden(decisions, x[:1], x, cost, [constraint])
    assert set(trail["bits"].values()) <= {4, 8}
    assert final(x).shape == (32, 10)
    from pluto.decisions.bits import strip_quantization

    float_model, bits = strip_quantization(final)
    assert cost.of_model(float_model, "size_bytes", bits) <= constraint.target


def test_precision_keys_and_missing_energy_metric():
    assert precision_key(4) == "int4" and precision_key(8) == "int8" and precision_key(32) == "fp32"
    cost = CostModel(create_model("small_cnn"), SHAPE, None)
    with pytest.raises(TableError, match="needs a latency table"):
        cost.expected("latency_ms")
