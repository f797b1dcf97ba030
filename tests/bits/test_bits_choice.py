"""BitWidthChoice: probabilities for the cost model, mixing modes, hard choice, BN-folded weight quantization."""
import pytest
import torch
from torch import nn

from pluto.decisions.bits import BitWidthChoice
from pluto.errors import ConfigError


def _choice(candidates=(4, 8, 32), **kw):
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3)
    c = BitWidthChoice(6, candidates, **kw)
    c.init_weight_steps(w)
    for q in c.input_quantizers.values():
        q.init_from(torch.randn(1000))
    return c, w


def test_probabilities_and_precision_keys_for_cost_tables():
    c, _ = _choice((4, 8, 16, 32))
    with torch.no_grad():
        c.alpha.copy_(torch.tensor([0.0, 1.0, 0.0, 2.0]))
    p = torch.softmax(torch.tensor([0.0, 1.0, 0.0, 2.0]), 0)
    probs = c.precision_probabilities()
    assert list(probs) == ["int4", "int8", "fp16", "fp32"]
    assert torch.allclose(torch.stack(list(probs.values())), p)
    assert float(c.expected_bits()) == pytest.approx(float((p * torch.tensor([4.0, 8, 16, 32])).sum()))


def test_expected_bits_is_differentiable():
    c, _ = _choice((4, 8))
    c.expected_bits().backward()
    # d/d alpha of p4*4 + p8*8 with p uniform: p_i (b_i - E[b]) = 0.5 * (-2), 0.5 * 2
    assert torch.allclose(c.alpha.grad, torch.tensor([-1.0, 1.0]))


def test_soft_mode_mixes_quantized_candidates():
    c, w = _choice((4, 8, 32))
    p = c.probabilities().detach()
    q4, q8 = c.weight_quantizers["4"](w), c.weight_quantizers["8"](w)
    assert torch.allclose(c(w), p[0] * q4 + p[1] * q8 + p[2] * w, atol=1e-6)


def test_gumbel_mode_forward_is_one_candidate_and_alpha_gets_gradient():
    c, w = _choice((4, 8, 32), mode="gumbel")
    torch.manual_seed(3)
    out = c(w)
    candidates = [c.weight_quantizers["4"](w), c.weight_quantizers["8"](w), w]
    assert any(torch.allclose(out, cand, atol=1e-6) for cand in candidates)
    out.pow(2).sum().backward()
    assert c.alpha.grad is not None and c.alpha.grad.abs().sum() > 0


def test_harden_fixes_one_candidate():
    c, w = _choice((4, 8, 32))
    with torch.no_grad():
        c.alpha.copy_(torch.tensor([0.1, 2.0, 0.3]))
    assert c.harden() == 8
    assert c.mode == "hard" and c.chosen_bits == 8
    assert torch.equal(c.probabilities(), torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(c(w), c.weight_quantizers["8"](w))
    assert c.harden(4) == 4
    with pytest.raises(ConfigError, match="candidates"):
        c.harden(16)


def test_four_bit_candidate_is_w4a8_by_default_and_w4a4_on_request():
    c, _ = _choice((4, 8))
    assert c.activation_bits == {4: 8, 8: 8} and list(c.input_quantizers) == ["8"]
    c44 = BitWidthChoice(6, (4, 8), min_activation_bits=4)
    assert c44.activation_bits == {4: 4, 8: 8} and sorted(c44.input_quantizers) == ["4", "8"]


def test_bn_folded_weight_is_on_the_integer_grid_after_folding():
    bn = nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.running_var.uniform_(0.5, 2.0)
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3)
    c = BitWidthChoice(6, (8,), bn=bn)
    c.init_weight_steps(w)
    factor = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().reshape(-1, 1, 1, 1)
    folded = c(w) * factor
    steps = c.weight_quantizers["8"].step.detach().reshape(-1, 1, 1, 1)
    codes = folded / steps
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    assert codes.abs().max() <= 128


@pytest.mark.parametrize("bad", [(3,), (), (8, 64)])
def test_unsupported_candidates_raise(bad):
    with pytest.raises(ConfigError, match="bit-width"):
        BitWidthChoice(4, bad)


def test_bad_mode_and_temperature_raise():
    with pytest.raises(ConfigError):
        BitWidthChoice(4, (8,), mode="random")
    with pytest.raises(ConfigError):
        BitWidthChoice(4, (8,), temperature=0.0)


@pytest.mark.parametrize("candidates", [(4, 8), (8, 32), (4, 8, 16, 32)])
@pytest.mark.parametrize("is_input", [False, True])
def test_mixture_equals_weighted_sum_of_candidates(candidates, is_input):
    """_mix (shared quantizers merged, two terms as one lerp) = sum_b p_b Q_b, in value and in the gradients
    of the value and of alpha; with one shared term (W4A8 and W8A8 inputs) it is that term exactly."""
    c, w = _choice(candidates)
    with torch.no_grad():
        c.alpha.copy_(torch.linspace(-0.5, 0.7, len(candidates)))
    value = (torch.randn(4, 3, 5, 5) if is_input else w).requires_grad_()
    quantizers = c.input_quantizers if is_input else c.weight_quantizers
    grad = torch.randn(value.shape)
    out = c._mix(value, quantizers, is_input=is_input)
    out.backward(grad)
    got = (out.detach(), value.grad.clone(), None if c.alpha.grad is None else c.alpha.grad.clone())
    value.grad, c.alpha.grad = None, None
    p = c.probabilities()
    ref = sum(p[i] * c._quantize(value, c.activation_bits.get(b, b) if is_input else b, quantizers)
              for i, b in enumerate(candidates))
    ref.backward(grad)
    torch.testing.assert_close(got[0], ref.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[1], value.grad, rtol=1e-6, atol=1e-6)
    if is_input and set(candidates) == {4, 8}:  # one 8-bit activation term: exactly it, nothing for alpha
        assert torch.equal(got[0], c.input_quantizers["8"](value).detach())
        assert got[2] is None and c.alpha.grad.abs().max() < 1e-4
    else:
        torch.testing.assert_close(got[2], c.alpha.grad, rtol=1e-4, atol=1e-5)


def test_hard_and_gumbel_forward_values_are_one_candidate_exactly():
    c, w = _choice((4, 8, 32), mode="gumbel")
    torch.manual_seed(1)
    c.begin_call()  # one straight-through Gumbel sample: the value is exactly one candidate's
    out = c(w)
    assert any(torch.equal(out, c._quantize(w * 1.0, b, c.weight_quantizers)) for b in (4, 8, 32))
    c.end_call()
    c.harden(4)
    assert torch.equal(c(w), c.weight_quantizers["4"](w))


@pytest.mark.parametrize("candidates,start,temperature", [((8, 32), 8, 1.0), ((4, 8, 32), 32, 0.5), ((8, 32), 32, 5.0)])
def test_lean_towards_starts_at_one_deployment(candidates, start, temperature):
    """The search starts at the measured reference deployment with probability p, not at the mean of all."""
    c, _ = _choice(candidates, temperature=temperature)
    c.lean_towards(start, 0.9)
    p = c.probabilities()
    i = candidates.index(start)
    assert float(p[i]) == pytest.approx(0.9, abs=1e-6)
    others = [float(v) for k, v in enumerate(p) if k != i]
    assert others == pytest.approx([0.1 / len(others)] * len(others), abs=1e-6)
    assert c.chosen_bits == start
    with pytest.raises(ConfigError, match="candidates"):
        c.lean_towards(16, 0.9)
    with pytest.raises(ConfigError, match="probability"):
        c.lean_towards(start, 1.0)
