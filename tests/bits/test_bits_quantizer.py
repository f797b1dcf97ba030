"""LsqQuantizer: forward formula, straight-through and LSQ step gradients, initialization from statistics."""
import math

import pytest
import torch

from pluto.decisions.bits import LsqQuantizer, grad_scale, round_ste
from pluto.errors import ConfigError


def test_round_ste_rounds_half_to_even_and_passes_gradient():
    x = torch.tensor([0.5, 1.5, 2.4, -0.5], requires_grad=True)
    y = round_ste(x)
    assert y.tolist() == [0.0, 2.0, 2.0, -0.0]
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_grad_scale_keeps_value_scales_gradient():
    s = torch.tensor(3.0, requires_grad=True)
    y = grad_scale(s, 0.25)
    assert float(y) == 3.0
    y.backward()
    assert float(s.grad) == pytest.approx(0.25)


def _per_tensor(bits=4, signed=True, symmetric=True, step=0.5):
    q = LsqQuantizer(bits, signed=signed, symmetric=symmetric)
    with torch.no_grad():
        q.step.fill_(step)
    q.initialized.fill_(True)
    return q


def test_forward_is_quantize_dequantize():
    q = _per_tensor(bits=4, step=0.5)  # range [-8, 7] * 0.5 = [-4, 3.5]
    x = torch.tensor([0.26, -1.1, 3.9, -10.0, 0.75])
    expected = torch.tensor([0.5, -1.0, 3.5, -4.0, 1.0])  # 0.75/0.5 = 1.5 -> 2 (half to even)
    assert torch.equal(q(x), expected)


def test_gradients_are_straight_through_inside_and_zero_outside():
    q = _per_tensor(bits=4, step=0.5)
    x = torch.tensor([0.3, -10.0, 10.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [1.0, 0.0, 0.0]


def test_step_gradient_matches_lsq_formula():
    q = _per_tensor(bits=4, step=0.5)
    x = torch.tensor([0.3, -10.0, 10.0])
    q(x).sum().backward()
    # LSQ: d x_hat / d s = -x/s + round(x/s) inside, qmin / qmax when clipped; times g = 1/sqrt(n * qmax)
    inside = -0.3 / 0.5 + round(0.3 / 0.5)
    expected = (inside + (-8) + 7) / math.sqrt(1 * 7)  # per-tensor: n = values per sample = x[0].numel() = 1
    assert float(q.step.grad) == pytest.approx(expected, rel=1e-5)


def test_asymmetric_zero_point_shifts_range_and_gets_gradient():
    q = _per_tensor(bits=8, signed=False, symmetric=False, step=0.1)
    with torch.no_grad():
        q.zero_point.fill_(10.0)  # range [(0-10)*0.1, (255-10)*0.1] = [-1.0, 24.5]
    x = torch.tensor([-3.0, 0.04, 30.0])
    assert torch.allclose(q(x), torch.tensor([-1.0, 0.0, 24.5]))
    q(x).sum().backward()
    # clipped values: d/dz of (clamp(round(x/s)+z) - z)*s = -s, inside 0
    assert float(q.zero_point.grad) == pytest.approx(-0.2)


def test_per_channel_minmax_init_uses_each_rows_max():
    w = torch.tensor([[1.0, -2.0], [0.5, 0.25]])
    q = LsqQuantizer(8, signed=True, symmetric=True, channels=2)
    q.init_from(w, "minmax")
    assert torch.allclose(q.step, torch.tensor([2.0 / 127, 0.5 / 127]))
    assert q.initialized


def test_lsq_init_is_papers_formula():
    x = torch.tensor([1.0, -3.0, 2.0, 2.0])
    q = LsqQuantizer(4, signed=True, symmetric=True)
    q.init_from(x, "lsq")
    assert float(q.step) == pytest.approx(2 * 2.0 / math.sqrt(7))


def test_mse_init_is_no_worse_than_minmax():
    torch.manual_seed(0)
    x = torch.randn(20000) ** 3  # heavy tails: clipping pays off
    errs = {}
    for method in ("minmax", "mse"):
        q = LsqQuantizer(4, signed=True, symmetric=True)
        q.init_from(x, method)
        q.eval()
        errs[method] = float((q(x) - x).pow(2).mean())
    assert errs["mse"] < errs["minmax"]


def test_asymmetric_init_covers_nonnegative_inputs_with_zero_point_zero():
    x = torch.rand(1000) * 6.0  # post-ReLU-like
    q = LsqQuantizer(8, signed=False, symmetric=False)
    q.init_from(x, "minmax")
    s, z = q.scale_and_zero_point()
    assert float(z) == 0.0 and float(s) == pytest.approx(float(x.max()) / 255, rel=1e-5)


def test_first_training_forward_initializes_and_eval_before_init_raises():
    q = LsqQuantizer(8, signed=False, symmetric=False)
    q.eval()
    with pytest.raises(ConfigError, match="calibrat"):
        q(torch.randn(4, 3))
    q.train()
    q(torch.randn(4, 3))
    assert bool(q.initialized)


@pytest.mark.parametrize("bits", [1, 17])
def test_bad_bit_count_is_a_config_error(bits):
    with pytest.raises(ConfigError):
        LsqQuantizer(bits, signed=True, symmetric=True)


def _composite(x, s, z, qmin, qmax):
    """The reference: LSQ written with autograd ops (round_ste + clamp), as LsqQuantizer computed it before."""
    z = torch.zeros((), dtype=x.dtype) if z is None else z
    return (torch.clamp(round_ste(x / s) + z, qmin, qmax) - z) * s


@pytest.mark.parametrize("per_channel", [False, True])
def test_fake_quantize_equals_composite_in_values_and_gradients(per_channel):
    """The one-pass autograd function gives bit-identical values and the same gradients (to float rounding)
    as the composite expression, including exact halves (round half to even) and values rounding onto
    qmin/qmax (clipped for the gradient, as torch.clamp's backward)."""
    from pluto.decisions.bits.quantizer import fake_quantize

    gen = torch.Generator().manual_seed(0)
    if per_channel:  # weights: symmetric, one step per output channel, 4 bits
        x = torch.randn(16, 8, 3, 3, generator=gen)
        s = torch.rand(16, 1, 1, 1, generator=gen) * 0.1 + 0.05
        z, qmin, qmax = None, -8, 7
        x[0, 0] = (torch.arange(9.0).reshape(3, 3) - 4 + 0.5) * s[0]  # exact halves of the grid
        x[1, 0, 0] = torch.tensor([-8.0, 7.0, -8.4]) * s[1]  # exactly on qmin / qmax, and rounding onto qmin
    else:  # activations: asymmetric per tensor, 8 bits, a learned zero point
        x = torch.randn(32, 4, 5, 5, generator=gen) * 3
        s, z, qmin, qmax = torch.tensor(0.05), torch.tensor(12.0), 0, 255
        x[0, 0] = (torch.arange(25.0).reshape(5, 5) - 12 + 0.5) * 0.05
        x[0, 1, 0] = torch.tensor([-12.0, 243.0, -11.6, 242.6, 300.0]) * 0.05
    grad = torch.randn(x.shape, generator=gen)
    leaves = []
    for fn in (fake_quantize, _composite):
        args = [t.clone().requires_grad_() if t is not None else None for t in (x, s, z)]
        out = fn(*args, qmin, qmax)
        out.backward(grad)
        leaves.append((out.detach(), *(t.grad if t is not None else None for t in args)))
    (out, dx, ds, dz), (ref, rdx, rds, rdz) = leaves
    assert torch.equal(out, ref)
    torch.testing.assert_close(dx, rdx, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ds, rds, rtol=1e-5, atol=1e-4)
    assert (dx == 0).sum() > 0 and (dx != 0).sum() > 0  # both clipped and in-range values were exercised
    if z is not None:
        torch.testing.assert_close(dz, rdz, rtol=1e-5, atol=1e-5)
        assert float(dz) != 0.0


def test_host_flag_follows_in_place_writes():
    """The cached host copy of a buffer (no device read per call) sees fill_, copy_ and load_state_dict."""
    from pluto.decisions.bits.quantizer import host_flag

    q = LsqQuantizer(8, signed=False, symmetric=False)
    assert host_flag(q.initialized) is False
    q.initialized.fill_(True)
    assert host_flag(q.initialized) is True
    q.load_state_dict({**q.state_dict(), "initialized": torch.tensor(False)})
    assert host_flag(q.initialized) is False
