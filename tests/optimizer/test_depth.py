"""Depth decisions (pluto.decisions.depth): which blocks are skippable, gated == skipped exactly, the cost of a
skipped block leaves the expected cost in value and gradient (plan == reference), saving keeps the skips, and a run
with ``compress.depth=true`` drops blocks to meet a budget."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from pluto.cost.expected import expected_cost
from pluto.cost.model import CostModel
from pluto.cost.table import LatencyTable
from pluto.decisions.bits import bit_choices
from pluto.decisions.depth import attach_block_gates, detach_block_gates, skip_blocks, skippable_blocks
from pluto.errors import ConfigError
from pluto.materialize.saving import load, save
from pluto.models import create_model
from pluto.optimizer.decisions import attach, build_concrete
from pluto.train import compose, run

TABLES = Path(__file__).resolve().parents[2] / "latency_tables"


@pytest.mark.parametrize("name,n,first", [
    ("resnet20", 7, "layers.0"),        # 9 blocks, 2 with a projection shortcut
    ("resnet18", 5, "layer1.0"),        # 8 blocks, 3 with a downsample
    ("mobilenet_v2", 10, "features.3"),  # the inverted residuals with use_res_connect
])
def test_blocks_with_an_identity_shortcut_are_skippable(name, n, first):
    sites = skippable_blocks(create_model(name, 10, 1, 28))
    assert len(sites) == n and sites[0].block == first
    assert all(s.branch_end.startswith(s.block + ".") for s in sites)
    # a skipped ResNet block (post-add ReLU of a ReLU'd input) is an identity: nothing of it runs
    assert all(s.activation is None for s in sites)


def test_a_model_without_residual_blocks_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="compress.depth=false"):
        attach_block_gates(create_model("small_cnn", 10, 1, 28))


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2", "resnet18"])
def test_hard_gates_compute_exactly_what_the_skipped_model_computes(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, 10, 1, 28).eval()
    sites = skippable_blocks(model)
    gates = attach_block_gates(model, sites)
    gates.set_mode("hard")
    keep = torch.ones(len(sites), dtype=torch.bool)
    keep[::2] = False
    gates.set_keep(keep)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        gated = model(x)
    concrete = copy.deepcopy(model)
    detach_block_gates(concrete)
    skip_blocks(concrete, sites, gates.skipped())
    assert len(gates.skipped()) == (len(sites) + 1) // 2
    with torch.no_grad():
        assert torch.equal(concrete(x), gated)
    save(concrete, tmp_path / "m.pt")
    restored = load(tmp_path / "m.pt")
    for block in gates.skipped():
        assert isinstance(restored.get_submodule(block), torch.nn.Identity)
    with torch.no_grad():
        assert torch.equal(restored(x), gated)


def test_a_skipped_block_leaves_the_expected_cost_in_value_and_gradient():
    lat = LatencyTable.load(TABLES / "cpu_ort_xeon_amx")
    torch.manual_seed(0)
    model = create_model("resnet20", 10, 1, 28)
    d = attach(copy.deepcopy(model), torch.zeros(1, 1, 28, 28), True, True, (8, 32), 0.9, None, "ste", depth=True)
    with torch.no_grad():
        for logit in d.gates.logits:
            logit.normal_(0.5, 2.0)
        for choice in bit_choices(d.model).values():
            choice.alpha.normal_()
        d.blocks.logits.copy_(torch.tensor([2.0, -1.0, 0.3, -0.2, 1.5, -3.0, 0.7]))
    cost = CostModel(model, (1, 1, 28, 28), lat, "int8")
    for metric in ("latency_ms", "size_bytes", "macs"):
        channels, precisions, presence = d.channels(), d.precisions(), d.presence()
        fast = cost.expected(metric, channels, precisions, presence=presence)
        leaves = [channels.cin, channels.cout, precisions.probs, d.blocks.logits]
        g_fast = torch.autograd.grad(fast, leaves, allow_unused=True, materialize_grads=True, retain_graph=True)
        ref = expected_cost(lat if metric == "latency_ms" else None, cost.ops, metric, dict(channels),
                            dict(precisions), weights=presence.as_weights(), default_precision="int8")
        g_ref = torch.autograd.grad(ref, leaves, allow_unused=True, materialize_grads=True)
        assert float(fast.detach()) == pytest.approx(float(ref.detach()), rel=1e-12)
        for a, b in zip(g_fast, g_ref):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max().clamp_min(1e-30)))
        assert float(g_fast[3].abs().sum()) > 0  # the blocks' logits get the cost's gradient
        # every block skipped prices what the concrete model without those blocks costs
        with torch.no_grad():
            searched = d.blocks.logits.detach().clone()
            d.blocks.set_keep(torch.zeros(7, dtype=torch.bool))
            d.blocks.set_mode("hard")
            concrete, _ = build_concrete(d, torch.zeros(1, 1, 28, 28))
            gated = cost.expected(metric, channels, precisions, presence=d.presence())
            direct = CostModel(concrete, (1, 1, 28, 28), lat, "int8").expected(metric, channels, precisions)
            d.blocks.set_mode("ste")
            d.blocks.logits.copy_(searched)
        if metric != "latency_ms":  # the latency fit's boundary terms pair other layers once blocks are gone
            assert float(gated) == pytest.approx(float(direct), rel=1e-9)
        assert float(gated) < float(fast.detach())


def test_a_depth_run_drops_blocks_to_meet_a_macs_budget(tmp_path):
    metrics = run(compose(["recipe=smoke_compress", "logger=none", "trainer.threads=1", "hw.table=null",
                           "model=resnet20", "compress.depth=true", "compress.prune=false", "compress.quantize=false",
                           "compress.distill=false", "constraints.macs=2.4e7", "compress.epochs.search=3"]),
                  run_dir=tmp_path)
    decisions = json.loads((tmp_path / "decisions.json").read_text())
    assert decisions["skipped_blocks"], decisions.get("search_block_probs")
    assert metrics["constraints_hold"] == 1 and metrics["macs"] <= 2.4e7
    restored = load(tmp_path / "model.pt")
    for block in decisions["skipped_blocks"]:
        assert isinstance(restored.get_submodule(block), torch.nn.Identity)


def test_the_projection_drops_blocks_before_shrinking_every_width_to_its_floor():
    """Blocks the search left kept while the budget needs fewer: the projection tries each number of extra dropped
    blocks (least probable first) with the widest widths that fit, and keeps the one with the most MACs."""
    from pluto.optimizer.constraints import Constraint
    from pluto.optimizer.decisions import fix_decisions

    lat = LatencyTable.load(TABLES / "cpu_ort_xeon_amx")
    torch.manual_seed(0)
    model = create_model("resnet20", 10, 1, 28)
    cost = CostModel(model, (1, 1, 28, 28), lat, "int8")
    d = attach(copy.deepcopy(model), torch.zeros(1, 1, 28, 28), True, False, (8,), 0.9, None, "ste", depth=True)
    with torch.no_grad():
        d.blocks.logits.copy_(torch.tensor([0.3, 0.2, 0.1, 0.4, 0.5, 0.6, 0.7]))  # all kept, layers.2 least
    target = 0.16  # the full-depth model at the narrowest widths is predicted at ~0.25 ms
    fix_decisions(d, cost, [Constraint("latency_ms", "latency_ms", target)], round_to=8)
    notes = d.trail["projection"]
    assert "still_violated" not in notes, notes
    assert notes["blocks_dropped_to_fit_budget"][0] == "layers.2"
    assert notes["width_scale_to_fit_budget"] > 0.5  # wide layers kept, blocks dropped instead
    concrete, _ = build_concrete(d, torch.zeros(1, 1, 28, 28))
    assert CostModel(concrete, (1, 1, 28, 28), lat, "int8").of_model(concrete, "latency_ms") <= target


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_the_shipped_table_prices_every_dropped_block_as_a_saving(precision):
    """A calibration may fit held-out networks better and still price a decision backwards (a negative per-op term
    for residual adds made dropping a block look free, 2026-12-07): each block dropped must lower the prediction."""
    lat = LatencyTable.load(TABLES / "cpu_ort_xeon_amx")
    model = create_model("resnet20", 10, 1, 28)
    sites = skippable_blocks(model)
    full = CostModel(model, (1, 1, 28, 28), lat, precision).of_model(model, "latency_ms")
    for site in sites:
        shallower = skip_blocks(copy.deepcopy(model), sites, [site.block])
        value = CostModel(shallower, (1, 1, 28, 28), lat, precision).of_model(shallower, "latency_ms")
        assert value < full - 0.002, (site.block, value, full)


def test_the_landing_puts_dropped_blocks_back_when_every_width_is_kept():
    """Under the band with every channel kept, the landing restores dropped blocks (the most probable first) while
    the chip's measurement stays within the target, and stops at the block that would exceed it."""
    from pluto.optimizer.constraints import Constraint
    from pluto.optimizer.decisions import land_on_target

    torch.manual_seed(0)
    d = attach(create_model("resnet20", 10, 1, 28), torch.zeros(1, 1, 28, 28), True, False, (8,), 0.9, None, "ste",
               depth=True)
    with torch.no_grad():
        for logits in d.gates.logits:
            logits.fill_(6.0)  # every channel kept: widths cannot grow
        d.blocks.logits.copy_(torch.tensor([-1.0, -0.2, -3.0, -0.5, 2.0, 2.0, 2.0]))  # four dropped
    searched = d.blocks.probabilities().detach()
    d.trail["search_block_probs"] = {site.block: float(p) for site, p in zip(d.blocks.sites, searched)}
    d.blocks.set_keep(d.blocks.probabilities() > 0.5)

    def measure() -> dict[str, float]:  # 0.1 ms + 0.02 ms per kept block
        return {"latency_ms": 0.1 + 0.02 * int(d.blocks.hard().sum())}

    def land(target: float) -> dict:
        return land_on_target(d, [Constraint("latency_ms", "latency_ms", target)], measure, (0.93, 1.0), 8)

    notes = land(0.175)  # 3 kept: 0.16 (0.91x, under the band); the most probable block back: 0.18, over the target
    assert "blocks_restored" not in notes and d.blocks.skipped() == ["layers.0", "layers.1", "layers.2", "layers.4"]
    notes = land(0.2)  # layers.1 back: 0.18 (0.90x, still under), then layers.4: 0.20 (1.0x, in the band)
    assert notes["blocks_restored"] == ["layers.1", "layers.4"] and notes["landed"] and "why" not in notes
    assert d.blocks.skipped() == ["layers.0", "layers.2"]
    notes = land(0.25)
    assert notes["blocks_restored"] == ["layers.0", "layers.2"] and notes["landed"]  # 0.24 ms


def test_the_landing_tries_the_next_block_when_one_would_exceed_the_target():
    """Blocks of different stages cost different amounts on the chip: when the most probable dropped block would
    exceed the target, a cheaper one may still fit, so the landing tries it instead of stopping."""
    from pluto.optimizer.constraints import Constraint
    from pluto.optimizer.decisions import land_on_target

    torch.manual_seed(0)
    d = attach(create_model("resnet20", 10, 1, 28), torch.zeros(1, 1, 28, 28), True, False, (8,), 0.9, None, "ste",
               depth=True)
    with torch.no_grad():
        for logits in d.gates.logits:
            logits.fill_(6.0)
        d.blocks.logits.copy_(torch.tensor([-1.0, -0.2, -3.0, -0.5, 2.0, 2.0, 2.0]))
    searched = d.blocks.probabilities().detach()
    d.trail["search_block_probs"] = {site.block: float(p) for site, p in zip(d.blocks.sites, searched)}
    d.blocks.set_keep(d.blocks.probabilities() > 0.5)
    dear = {"layers.0", "layers.1", "layers.2"}  # the 28 px stage: 0.04 ms a block, the others 0.01 ms

    def measure() -> dict[str, float]:
        kept = [s.block for s, k in zip(d.blocks.sites, d.blocks.hard().tolist()) if k]
        return {"latency_ms": 0.1 + sum(0.04 if b in dear else 0.01 for b in kept)}

    assert measure()["latency_ms"] == pytest.approx(0.13)
    notes = land_on_target(d, [Constraint("latency_ms", "latency_ms", 0.15)], measure, (0.93, 1.0), 8)
    # layers.1 (the most probable) would read 0.17 ms: left out; layers.4 fits (0.14 ms = 0.93x): landed
    assert notes["blocks_over_target"] == ["layers.1"] and notes["blocks_restored"] == ["layers.4"]
    assert notes["landed"] and "why" not in notes
    assert d.blocks.skipped() == ["layers.0", "layers.1", "layers.2"]
