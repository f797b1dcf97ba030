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
