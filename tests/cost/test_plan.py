"""CostPlan: the search step's expected cost as batched tensor ops on the training device equals the reference
per-op sum (``expected_cost``) in value and gradient, on every shipped table and on the CPU or a GPU."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from pluto.cost.expected import expected_cost
from pluto.cost.model import CostModel
from pluto.cost.plan import ChannelCounts, PrecisionProbs
from pluto.cost.table import LatencyTable
from pluto.decisions.bits import bit_choices
from pluto.models import create_model
from pluto.optimizer.decisions import attach

TABLES = Path(__file__).resolve().parents[2] / "latency_tables"
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _decisions(name: str, bits: tuple[int, ...], device: str):
    torch.manual_seed(0)
    model = create_model(name, 10, 1, 28)
    d = attach(copy.deepcopy(model), torch.zeros(1, 1, 28, 28), True, True, bits, 0.9, None, "ste")
    with torch.no_grad():  # gates on both sides of 0.5 (STE counts) and uneven bit probabilities
        for logit in d.gates.logits:
            logit.normal_(0.5, 2.0)
        for choice in bit_choices(d.model).values():
            choice.alpha.normal_()
    d.model.to(device)
    return model, d


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,table,precision,bits", [
    ("small_cnn", "cpu_ort_xeon_amx", "int8", (4, 8)),
    ("resnet18", "cpu_ort_xeon_amx", "int8", (4, 8)),
    ("small_cnn", "cpu_ort_epyc", "int8", (4, 8, 32)),
    ("resnet18", "cpu_ort_xeon_amx", "int8", (8, 32)),  # per-precision fits + priced precision changes
    ("small_cnn", "h100_cudagraph", "fp32", (16, 32)),
])
def test_plan_equals_reference_sum_in_value_and_gradient(name, table, precision, bits, device):
    if not (TABLES / table / "metadata.json").exists():
        pytest.skip(f"table {table} not shipped here")
    lat = LatencyTable.load(TABLES / table)
    model, d = _decisions(name, bits, device)
    cost = CostModel(model, (1, 1, 28, 28), lat, precision).to(device)
    for metric in ("latency_ms", "size_bytes", "macs"):
        channels, precisions = d.channels(), d.precisions()
        assert isinstance(channels, ChannelCounts) and isinstance(precisions, PrecisionProbs)
        fast = cost.expected(metric, channels, precisions)
        assert fast.device.type == device  # priced where the decisions live: no host round trip
        leaves = [channels.cin, channels.cout, precisions.probs]
        g_fast = torch.autograd.grad(fast, leaves, allow_unused=True, materialize_grads=True)
        ref = expected_cost(lat if metric == "latency_ms" else None, cost.ops, metric,
                            {k: (i.cpu(), o.cpu()) for k, (i, o) in channels.items()},
                            {k: {b: p.cpu() for b, p in v.items()} for k, v in precisions.items()},
                            default_precision=precision)
        g_ref = torch.autograd.grad(ref, leaves, allow_unused=True, materialize_grads=True)
        assert float(fast.detach()) == pytest.approx(float(ref.detach()), rel=1e-12)
        for a, b in zip(g_fast, g_ref):
            assert torch.allclose(a.cpu(), b.cpu(), rtol=1e-5, atol=1e-6 * float(b.abs().max().clamp_min(1e-30)))


def test_plan_is_built_once_per_layout_and_falls_back_for_fixed_counts():
    lat = LatencyTable.load(TABLES / "cpu_ort_xeon_amx")
    model, d = _decisions("small_cnn", (4, 8), "cpu")
    cost = CostModel(model, (1, 1, 28, 28), lat, "int8")
    for _ in range(3):
        cost.expected("latency_ms", d.channels(), d.precisions())
    assert len(cost._plans) == 1
    with torch.no_grad():  # counts without a gradient pick table grids by their values: the reference path
        channels, precisions = d.channels(), d.precisions()
        value = cost.expected("latency_ms", channels, precisions)
        ref = expected_cost(lat, cost.ops, "latency_ms", dict(channels), dict(precisions), default_precision="int8")
    assert len(cost._plans) == 1
    assert float(value) == float(ref)
