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
