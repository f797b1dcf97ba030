"""The fused QAT nodes (``LsqQuantizer``'s one-node forward, ``BitWidthChoice``'s batched weight candidates) compute
what the composite autograd expressions they replaced computed: the same values and the same gradients w.r.t. the
input, the weight, the steps, the zero points and the bit logits, edge cases included (a step at or under eps, a
negative step, a zero point on the range's edge, a BN channel with gamma = 0). The references below are frozen
copies of that composite math (``grad_scale``/``round_ste``/``clamp``, the lerp / weighted-sum mixture, simulated
BN folding)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pluto.decisions.bits import LsqQuantizer, fp16_ste, grad_scale, round_ste
from pluto.decisions.bits.choice import BitWidthChoice, bn_fold_factor


def _old_lsq(q: LsqQuantizer, x: torch.Tensor) -> torch.Tensor:
    n = x[0].numel() if not q.per_channel else x.numel() // q.step.numel()
    g = 1.0 / math.sqrt(max(1, n) * q.qmax)
    s = q._shape(x, grad_scale(q.step, g).abs().clamp_min(1e-8))
    z = 0 if q.symmetric else q._shape(x, round_ste(q.zero_point).clamp(q.qmin, q.qmax))
    return (torch.clamp(round_ste(x / s) + z, q.qmin, q.qmax) - z) * s


def _old_weight(choice: BitWidthChoice, weight: torch.Tensor) -> torch.Tensor:
    def quantize(value, bits):
        if bits == 32:
            return value
        if bits == 16:
            return fp16_ste(value)
        return _old_lsq(choice.weight_quantizers[str(bits)], value)

    def mix(value):
        if choice._single_path():
            return quantize(value, choice.chosen_bits)
        if len(choice.candidates) == 1:
            return quantize(value, choice.candidates[0])
        weights = choice._step_weights if choice._step_weights is not None else choice._mixture_weights()
        terms = [(quantize(value, b), weights[i]) for i, b in enumerate(choice.candidates)]
        if len(terms) == 2:
            return torch.lerp(terms[1][0], terms[0][0], terms[0][1])
        out = terms[0][0] * terms[0][1]
        for term, w in terms[1:]:
            out = out + term * w
        return out

    if choice.bn is None or choice.candidates == (32,):
        return mix(weight)
    factor = bn_fold_factor(choice.bn).detach().reshape(-1, *([1] * (weight.dim() - 1)))
    factor = torch.where(factor.abs() < 1e-12, torch.full_like(factor, 1e-12), factor)
    return mix(weight * factor) / factor


def _grads(out, inputs, grad_out):
    grads = torch.autograd.grad(out, inputs, grad_out, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(i) if g is None else g for i, g in zip(inputs, grads)]


def _assert_same(new, old, inputs, grad_out):
    torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-7)
    for g_new, g_old in zip(_grads(new, inputs, grad_out), _grads(old, inputs, grad_out)):
        torch.testing.assert_close(g_new, g_old, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("bits,signed,symmetric,channels,axis", [
    (8, False, False, 1, 0), (4, False, False, 1, 0), (8, True, False, 1, 0),
    (4, True, True, 6, 0), (8, True, True, 6, 0), (8, False, False, 6, 1)])
def test_lsq_node_equals_composite(bits, signed, symmetric, channels, axis):
    torch.manual_seed(0)
    q = LsqQuantizer(bits, signed, symmetric, channels=channels, axis=axis)
    x = (torch.randn(6, 6, 5, 5) * 2).requires_grad_()
    q.init_from(x.detach())
    with torch.no_grad():
        if channels > 1:  # a negative step, one under eps, one at exactly eps
            q.step[1] *= -1
            q.step[2] = 1e-9
            q.step[3] = 1e-8
        if not symmetric:  # zero points on and beyond the range's edges, and inside
            edge = torch.tensor([q.qmin, q.qmax, q.qmin - 3.0, q.qmin + 2.4, q.qmax + 0.4, 1.6])
            q.zero_point.copy_(edge[: q.zero_point.numel()])
    inputs = [x, q.step] + ([] if symmetric else [q.zero_point])
    grad_out = torch.randn(6, 6, 5, 5)
    _assert_same(q(x), _old_lsq(q, x), inputs, grad_out)
    if not symmetric and channels == 1:  # per tensor, zero point strictly inside the range
        with torch.no_grad():
            q.zero_point.fill_(3.3)
        _assert_same(q(x), _old_lsq(q, x), inputs, grad_out)


def _bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels) + 0.5)
        bn.weight[0] = 0.0  # folds to the 1e-12 guard
        bn.weight[1] *= -1
        bn.running_var.copy_(torch.rand(channels) + 0.1)
    return bn


@pytest.mark.parametrize("candidates", [(4, 8), (4, 8, 32), (8, 16), (4, 8, 16, 32), (8,), (4, 16), (16, 32), (32, 16)])
@pytest.mark.parametrize("mode", ["soft", "gumbel", "hard"])
@pytest.mark.parametrize("fold", [True, False])
def test_weight_candidates_node_equals_composite(candidates, mode, fold):
    torch.manual_seed(1)
    weight = (torch.randn(8, 4, 3, 3) * 0.3).requires_grad_()
    choice = BitWidthChoice(8, candidates, mode=mode, temperature=0.7, bn=_bn(8) if fold else None)
    choice.init_weight_steps(weight.detach())
    with torch.no_grad():
        choice.alpha.copy_(torch.randn(len(candidates)))
        for q in choice.weight_quantizers.values():
            q.step.mul_(torch.rand(8) + 0.5)
            q.step[2] *= -1
            q.step[3] = 1e-9
    choice.train()
    choice.begin_call()  # gumbel: one sample shared by both computations
    inputs = [weight, choice.alpha] + [q.step for q in choice.weight_quantizers.values()]
    grad_out = torch.randn_like(weight)
    _assert_same(choice(weight), _old_weight(choice, weight), inputs, grad_out)
    choice.end_call()
    if len(candidates) > 1:  # hardened at each candidate
        for bits in candidates:
            choice.harden(bits)
            _assert_same(choice(weight), _old_weight(choice, weight), inputs, grad_out)


@pytest.mark.parametrize("candidates", [(16, 32), (32, 16), (4, 16, 32)])
@pytest.mark.parametrize("mode", ["soft", "gumbel"])
def test_the_fp16_fp32_input_mixture_node_equals_the_lerp(candidates, mode):
    """The GPU search's fp16/fp32 input mixture (one node, identity gradient to x) against ``lerp``'s."""
    torch.manual_seed(3)
    x = (torch.randn(4, 3, 9, 9) * 50).requires_grad_()  # large values: fp16 rounding is visible
    choice = BitWidthChoice(3, candidates, mode=mode, temperature=0.7)
    with torch.no_grad():
        choice.alpha.copy_(torch.randn(len(candidates)))
    choice.train()
    choice.begin_call()
    weights = choice._step_weights
    if len(candidates) == 2:
        i16 = choice.candidates.index(16)
        reference = torch.lerp(x, fp16_ste(x), weights[i16])
    else:
        reference = sum(w * (fp16_ste(x) if b == 16 else x if b == 32 else choice.input_quantizers["8"](x))
                        for b, w in zip(choice.candidates, weights))
    grad_out = torch.randn_like(x)
    new = choice.quantize_input(x)
    _assert_same(new, reference, [x, choice.alpha], grad_out)
    assert _grads(new, [choice.alpha], grad_out)[0].abs().sum() > 0  # the bit logits learn from the mixture
    choice.end_call()


def test_weight_candidates_node_on_a_linear_layer_and_in_eval():
    torch.manual_seed(2)
    weight = torch.randn(5, 7, requires_grad=True)
    choice = BitWidthChoice(5, (4, 8), bn=nn.BatchNorm1d(5))
    choice.init_weight_steps(weight.detach())
    inputs = [weight, choice.alpha] + [q.step for q in choice.weight_quantizers.values()]
    for training in (True, False):
        choice.train(training)
        _assert_same(choice(weight), _old_weight(choice, weight), inputs, torch.randn(5, 7))


@pytest.fixture
def fused_on(monkeypatch):
    """The fused CPU kernel for every per-tensor call (the suite runs with PLUTO_FUSED_QUANT=off)."""
    from pluto.decisions.bits import quantizer

    monkeypatch.setitem(quantizer._FUSED, "mode", "auto")
    monkeypatch.setitem(quantizer._FUSED, "error", None)
    monkeypatch.setattr(quantizer, "FUSED_MIN_NUMEL", 0)
    return quantizer


@pytest.mark.parametrize("bits,signed,symmetric,zero_point", [
    (8, False, False, 0.0), (8, False, False, 3.3), (8, False, False, 255.0), (8, False, False, -3.0),
    (4, False, False, 2.6), (8, True, True, None), (4, True, True, None), (8, False, False, "tiny step")])
def test_the_fused_cpu_kernel_equals_the_eager_node(fused_on, bits, signed, symmetric, zero_point):
    """The per-tensor (activation) quantizer's compiled CPU kernel: the same values bit for bit (ties at .5
    included) and the same gradients for x, the step and the zero point, also on a 2-d input and in no_grad."""
    torch.manual_seed(0)
    q = LsqQuantizer(bits, signed, symmetric)
    x0 = torch.randn(4, 8, 6, 6) * 2
    q.init_from(x0)
    with torch.no_grad():
        if zero_point == "tiny step":
            q.step.fill_(1e-9)
        elif zero_point is not None:
            q.zero_point.fill_(zero_point)
        s = q.step.abs().clamp_min(1e-8)
        x0[0, 0, 0, :6] = (torch.arange(6) + 0.5) * s  # exact ties: round half to even, as ONNX
    grad_out = torch.randn_like(x0)
    results = {}
    for mode in ("off", "auto"):
        fused_on.fused_quantization(mode)
        x = x0.clone().requires_grad_()
        q.step.grad = None
        if not symmetric:
            q.zero_point.grad = None
        y = q(x)
        y.backward(grad_out)
        results[mode] = (y.detach(), x.grad, q.step.grad, None if symmetric else q.zero_point.grad)
        with torch.no_grad():
            results[mode + "/2d"] = (q(x0.reshape(16, -1)),)
    assert fused_on._FUSED["error"] is None and fused_on._FUSED["kernels"] is not None
    assert torch.equal(results["auto"][0], results["off"][0])
    assert torch.equal(results["auto"][1], results["off"][1])
    assert torch.equal(results["auto/2d"][0], results["off/2d"][0])
    for new, old in zip(results["auto"][2:], results["off"][2:]):
        if old is not None:
            torch.testing.assert_close(new, old, rtol=1e-4, atol=1e-6)


def test_a_fused_kernel_that_cannot_compile_warns_once_and_runs_eagerly(fused_on, monkeypatch):
    def broken(*args):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setitem(fused_on._FUSED, "kernels", (broken, broken))
    torch.manual_seed(0)
    q = LsqQuantizer(8, False, False)
    x = torch.randn(2, 3, 4, 4).requires_grad_()
    q.init_from(x.detach())
    with pytest.warns(RuntimeWarning, match="did not compile.*PLUTO_FUSED_QUANT=off"):
        y = q(x)
    y.sum().backward()
    fused_on.fused_quantization("off")
    x2 = x.detach().clone().requires_grad_()
    y2 = q(x2)
    y2.sum().backward()
    assert torch.equal(y, y2) and torch.equal(x.grad, x2.grad)
    with pytest.raises(Exception, match="fused quantization mode 'fast'"):
        fused_on.fused_quantization("fast")
