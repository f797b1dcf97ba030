from pathlib import Path

import pytest
import torch
from torch import nn

from pluto.cost.ops import extract_ops, total_macs
from pluto.decisions.ops import Supernet, derive
from pluto.decisions.ops.cost import (architecture_cost, block_costs, candidate_modules, expected_supernet_cost,
                                      fixed_modules, min_cost_architecture, profile_modules)


TABLES = [Path(__file__).resolve().parents[2] / "latency_tables" / name
          for name in ("cpu_ort", "cpu_ort_epyc", "cpu_torch", "h100_cudagraph")]
needs_table = pytest.mark.skipif(not any((t / "metadata.json").exists() for t in TABLES),
                                 reason="no shipped latency table")


def _load_table(precision: str = "fp32"):
    """The first shipped table that loads and has ``precision`` (one may be mid re-profiling)."""
    from pluto.cost.table import LatencyTable
    from pluto.errors import TableError

    problems = []
    for path in TABLES:
        try:
            table = LatencyTable.load(path)
        except TableError as exc:
            problems.append(str(exc))
            continue
        if precision in table.precisions:
            return table
    pytest.skip(f"no usable shipped table with {precision}: {problems}")


@pytest.fixture(scope="module")
def mbconv():
    """One mbconv_28 supernet shared by tests (its candidate prices are cached per supernet)."""
    return Supernet("mbconv_28")


def test_candidate_modules_cover_every_block_with_consistent_shapes():
    net = Supernet("tiny_28")
    cands = candidate_modules(net, (1, 1, 28, 28))
    assert list(cands) == list(net.choice_blocks())
    for name, entries in cands.items():
        assert len(entries) == len(net.choice_blocks()[name].names)
        outs = set()
        for module, shape in entries:
            assert shape == net.block_inputs[name]
            outs.add(tuple(module.eval()(torch.zeros(shape)).shape))
        assert len(outs) == 1, f"{name}: candidates disagree on output shape {outs}"
    assert [n for n, _, _ in fixed_modules(net)] == ["stem", "head"]


def test_expected_macs_of_one_hot_choice_equals_derived_network_macs(mbconv):
    net = mbconv
    arch = {n: b.names[i % len(b.names)] for i, (n, b) in enumerate(net.choice_blocks().items())}
    net.fix_architecture(arch)
    net.set_temperature(1e-3)  # probabilities become one-hot
    exact = total_macs(extract_ops(derive(net), (1, 1, 28, 28)))
    assert float(expected_supernet_cost(net, None, metric="macs").detach()) == pytest.approx(exact, rel=1e-5)
    assert architecture_cost(net, arch) == pytest.approx(exact, rel=1e-5)


@needs_table
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_expected_latency_equals_table_prediction_of_derived_network(mbconv, precision):
    table = _load_table(precision)
    arch = mbconv.random_architecture(torch.Generator().manual_seed(7))
    mbconv.fix_architecture(arch)  # hard mode: exact one-hot probabilities
    whole = table.predict(derive(mbconv), (1, 1, 28, 28), "latency_ms", precision)
    cost = expected_supernet_cost(mbconv, table, metric="latency_ms", default_precision=precision)
    assert float(cost.detach()) == pytest.approx(whole, rel=1e-4)  # calibration (per-group affine) stays exact
    assert architecture_cost(mbconv, arch, table, metric="latency_ms", default_precision=precision) == \
        pytest.approx(whole, rel=1e-4)


@needs_table
def test_expected_latency_gradient_moves_mass_off_dear_ops(mbconv):
    table = _load_table()
    mbconv.set_mode("soft")
    mbconv.set_temperature(1.0)
    with torch.no_grad():
        for alpha in mbconv.arch_parameters():
            alpha.zero_()
            alpha.grad = None
    expected_supernet_cost(mbconv, table, metric="latency_ms").backward()
    _, deltas = block_costs(mbconv, table, metric="latency_ms")
    for alpha, d in zip(mbconv.arch_parameters(), deltas.values()):
        p = torch.full_like(d, 1 / len(d))  # uniform: d cost / d alpha_i = p_i * (delta_i - E[delta]) / T
        torch.testing.assert_close(alpha.grad, p * (d - (p * d).sum()))
        assert int(torch.argmax(alpha.grad)) == int(torch.argmax(d))


def test_expected_cost_lies_between_cheapest_and_dearest():
    net = Supernet("tiny_28")
    _, cheapest = min_cost_architecture(net, metric="macs")
    fixed, deltas = block_costs(net, None, metric="macs")
    dearest = float(fixed) + sum(float(d.max()) for d in deltas.values())
    value = float(expected_supernet_cost(net, None, metric="macs").detach())
    assert cheapest < value < dearest


def test_min_cost_architecture_is_cheapest_and_skips_where_possible(mbconv):
    net = mbconv
    arch, cost = min_cost_architecture(net)
    assert all(arch[n] == "skip" for n, b in net.choice_blocks().items() if "skip" in b.names)
    assert all(arch[n] == "mb_k3_e3" for n, b in net.choice_blocks().items() if "skip" not in b.names)
    assert cost == pytest.approx(total_macs(extract_ops(derive(net, arch), (1, 1, 28, 28))), rel=1e-6)
    torch.manual_seed(0)
    for _ in range(5):
        other = {n: b.names[int(torch.randint(len(b.names), ()))] for n, b in net.choice_blocks().items()}
        assert architecture_cost(net, other) >= cost


def test_size_bytes_counts_precisions():
    net = Supernet("tiny_28")
    fp32 = float(expected_supernet_cost(net, None, metric="size_bytes").detach())
    int8 = float(expected_supernet_cost(net, None, metric="size_bytes", default_precision="int8").detach())
    assert int8 == pytest.approx(fp32 / 4, rel=1e-5)


def test_profile_modules_lists_distinct_blocks_and_fixed_ops():
    pairs = profile_modules("tiny_28")
    # stem + head + stage0: 4 first-block + 4 repeat-block candidates, stage1 the same
    assert len(pairs) == 2 + 16
    for module, shape in pairs:
        assert isinstance(module, nn.Module) and len(shape) == 4 and not module.training
        module(torch.zeros(shape))
    assert len(profile_modules("mbconv_28")) > len(pairs)


def test_shipped_spaces_hook_dedups_and_is_importable_by_name():
    import importlib

    fn = getattr(importlib.import_module("pluto.decisions.ops"), "profile_shipped_spaces")
    pairs = fn()
    keys = [(repr(m), s) for m, s in pairs]
    assert len(keys) == len(set(keys))
    shapes = {s for _, s in pairs}
    assert (1, 1, 28, 28) in shapes and (1, 3, 32, 32) in shapes and {s[2] for s in shapes} >= {28, 32, 14, 16, 4}
    assert any(type(m).__name__ == "BasicBlock" and m.kernel == 5 for m, _ in pairs)


def test_cost_temperature_prices_the_sharpened_distribution():
    net = Supernet("tiny_28", temperature=5.0)
    with torch.no_grad():
        for alpha in net.arch_parameters():
            alpha.copy_(torch.linspace(1.0, 0.0, len(alpha)))
    at_current = float(expected_supernet_cost(net, None, metric="macs").detach())
    at_low = float(expected_supernet_cost(net, None, metric="macs", temperature=0.01).detach())
    argmax = architecture_cost(net, net.architecture())
    assert at_low == pytest.approx(argmax, rel=1e-4) and at_current != pytest.approx(argmax, rel=1e-2)
    net.set_temperature(0.01)
    assert float(expected_supernet_cost(net, None, metric="macs").detach()) == pytest.approx(at_low, rel=1e-6)
