import pytest
import torch

from pluto.cost.expected import bits_to_precision, expected_cost, minimum_cost
from pluto.cost.ops import extract_ops
from pluto.errors import ConfigError, TableError
from pluto.models import create_model


@pytest.fixture
def ops():
    return extract_ops(create_model("small_cnn", width=0.5), (1, 28, 28))


def test_matches_predict_at_nominal(table, ops):
    value = expected_cost(table, ops, "latency_ms")
    assert float(value) == pytest.approx(table.predict_ops(ops), rel=1e-9)


def test_gradients_flow_to_expected_channels(table, ops):
    conv = next(op for op in ops if op.kind == "conv" and op.cin > 1)
    cin = torch.tensor(float(conv.cin) * 0.7, requires_grad=True)
    cout = torch.tensor(float(conv.cout) * 0.6, requires_grad=True)
    cost = expected_cost(table, ops, "latency_ms", channels={conv.name: (cin, cout)})
    cost.backward()
    assert cin.grad > 0 and cout.grad > 0
    assert float(cost) < table.predict_ops(ops)


def test_precision_mixture_and_gradient(table, ops):
    logits = torch.zeros(2, requires_grad=True)
    probs = torch.softmax(logits, 0)
    mix = {op.name: {"fp32": probs[0], "int8": probs[1]} for op in ops}
    cost = expected_cost(table, ops, "latency_ms", precisions=mix)
    fp32, int8 = table.predict_ops(ops, precision="fp32"), table.predict_ops(ops, precision="int8")
    assert float(cost) == pytest.approx((fp32 + int8) / 2, rel=1e-6)
    cost.backward()
    assert logits.grad[1] < 0 < logits.grad[0]  # moving to int8 lowers latency


def test_size_bytes_and_macs_analytic(ops):
    params = sum(op.params for op in ops)
    assert float(expected_cost(None, ops, "size_bytes")) == pytest.approx(4 * params)
    int4 = {op.name: {4: torch.tensor(1.0)} for op in ops}
    assert float(expected_cost(None, ops, "size_bytes", precisions=int4)) == pytest.approx(0.5 * params)
    assert float(expected_cost(None, ops, "macs")) == sum(op.macs for op in ops)


def test_weights_for_op_choice(table, ops):
    half = {op.name: torch.tensor(0.5) for op in ops}
    assert float(expected_cost(table, ops, "latency_ms", weights=half)) == pytest.approx(table.predict_ops(ops) / 2)


def test_errors_and_bits():
    assert [bits_to_precision(b) for b in (32, 16, 8, 4)] == ["fp32", "fp16", "int8", "int8"]
    with pytest.raises(ConfigError):
        bits_to_precision(3)
    with pytest.raises(TableError, match="needs a latency table"):
        expected_cost(None, [], "latency_ms")
    with pytest.raises(ConfigError, match="unknown cost metric"):
        expected_cost(None, [], "joules")


def test_minimum_cost_below_nominal(table, ops):
    mins = {op.name: (max(1, op.cin // 4), max(1, op.cout // 4)) for op in ops if op.kind == "conv" and op.cin > 1}
    low = minimum_cost(table, ops, "latency_ms", mins, default_precisions=("fp32", "int8"))
    assert 0 < low < table.predict_ops(ops, precision="int8") < table.predict_ops(ops)


def test_each_precision_is_calibrated_by_its_own_fit_and_changes_of_precision_are_priced(table):
    """A model at one precision costs exactly that precision's calibration, whatever the default; a mixed one pays
    each precision's fit once, one offset, and per_edge + per_mb per change between consecutive weight layers."""
    import torch

    from pluto.cost.expected import boundary_terms, expected_cost
    from pluto.cost.ops import extract_ops
    from pluto.models import create_model

    model = create_model("small_cnn", width=0.5)
    ops = extract_ops(model, (1, 28, 28))
    table.metadata["calibration"] = {
        "fp32": {"latency_ms": {"scale": 1.5, "per_mb": 0.0, "per_op": 0.0, "offset": 0.01}},
        "int8": {"latency_ms": {"scale": 0.5, "per_mb": 0.0, "per_op": 0.0, "offset": 0.02}}}
    one = torch.tensor(1.0, dtype=torch.float64)
    layers = [op.name for op in ops if op.kind in ("conv", "linear")]
    all32 = {name: {"fp32": one} for name in layers}
    uniform = float(expected_cost(table, [op for op in ops], "latency_ms", precisions=all32, default_precision="int8"))
    fp32_sum = sum(float(table.lookup(op, "latency_ms", "fp32" if op.name in all32 else "int8")) for op in ops)
    int8_sum = sum(float(table.lookup(op, "latency_ms", "int8")) for op in ops if op.name not in all32)
    assert uniform == pytest.approx(1.5 * (fp32_sum - int8_sum) + 0.5 * int8_sum + 0.02)
    assert float(expected_cost(table, ops, "latency_ms", default_precision="fp32")) == \
        pytest.approx(table.predict_ops(ops, "latency_ms", "fp32"))
    # alternating layers: 1 change per consecutive pair, crossing the earlier layer's output
    mixed = {name: {("int8" if i % 2 else "fp32"): one} for i, name in enumerate(layers)}
    probs = [{"int8" if layers.index(op.name) % 2 else "fp32": one} if op.name in layers else None for op in ops]
    edges, mb = boundary_terms(ops, probs, [torch.tensor(float(op.cout), dtype=torch.float64) for op in ops])
    assert float(edges) == len(layers) - 1 and float(mb) > 0
    before = float(expected_cost(table, ops, "latency_ms", precisions=mixed, default_precision="int8"))
    table.metadata["calibration_boundary"] = {"latency_ms": {"per_edge": 0.003, "per_mb": 0.2}}
    after = float(expected_cost(table, ops, "latency_ms", precisions=mixed, default_precision="int8"))
    assert after - before == pytest.approx(0.003 * float(edges) + 0.2 * float(mb))
    # a 50/50 layer next to a sure one changes precision with probability 1/2
    half = {layers[0]: {"fp32": one * 0.5, "int8": one * 0.5}, layers[1]: {"int8": one}}
    p2 = [{"fp32": one * 0.5, "int8": one * 0.5} if op.name == layers[0] else {"int8": one} if op.name == layers[1]
          else None for op in ops]
    assert float(boundary_terms(ops, p2, [torch.tensor(float(op.cout)) for op in ops])[0]) == pytest.approx(0.5)
    assert float(expected_cost(table, ops, "latency_ms", precisions=half, default_precision="int8")) > 0


def test_the_price_of_a_precision_change_is_recovered_from_timed_mixed_networks(tiny_space):
    """fit_boundaries on 'measurements' made with known coefficients gives them back."""
    import random

    from pluto.cost.profiler import fit_boundaries, mixed_prediction
    from pluto.decisions.bits.prepare import quantizable_layers
    from tests.cost.conftest import make_table
    from pluto.models import create_model

    table = make_table(tiny_space, energy=False)
    rng = random.Random(0)
    by_label, records = {}, []
    for i in range(8):
        model = create_model("small_cnn", width=rng.choice([0.25, 0.5]))
        bits = {name: rng.choice([8, 32]) for name in quantizable_layers(model)}
        value, edges, mb = mixed_prediction(table, model, (1, 28, 28), bits, boundaries=False)
        by_label[f"n{i}"] = (model, (1, 28, 28))
        records.append({"model": f"n{i}", "bits": bits, "measured_latency_ms": value + 0.004 * edges + 0.25 * mb})
    fit_boundaries(table, records, by_label)
    fit = table.metadata["calibration_boundary"]["latency_ms"]
    assert fit["per_edge"] == pytest.approx(0.004, rel=1e-3) and fit["per_mb"] == pytest.approx(0.25, rel=1e-3)
    assert fit["mape_with_pct"] < 1e-3 < fit["mape_without_pct"]
    # re-timed later on a machine running 1.2x slower: the level recorded with each record takes the drift out
    slow = [{**r, "measured_latency_ms": r["measured_latency_ms"] * 1.2, "level": 1.2} for r in records]
    fit_boundaries(table, slow, by_label)
    fit = table.metadata["calibration_boundary"]["latency_ms"]
    assert fit["per_edge"] == pytest.approx(0.004, rel=1e-3) and fit["per_mb"] == pytest.approx(0.25, rel=1e-3)

