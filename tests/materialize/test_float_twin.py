"""The fp32 export of a quantization-aware model is the float network it trained: weights within the learned range."""
import copy

import torch
from torch import nn

from pluto.decisions.bits import bit_choices, prepare_qat, strip_quantization
from pluto.materialize.export import clip_to_quantizer_range, float_export_model


def _qat_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    x = torch.randn(32, 3, 8, 8)
    net.train()(x)  # BN statistics
    q = prepare_qat(net.eval(), bits=8, example_input=x[:1], calibrate=x, mode="hard")
    with torch.no_grad():  # stale latent weights far outside the learned range, as LSQ leaves clipped weights
        for name in bit_choices(q):
            w = q.get_submodule(name).parametrizations.weight.original
            w[0].mul_(20.0)
    return q.eval()


def test_float_twin_computes_what_the_quantization_aware_model_does():
    q = _qat_net()
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        qat = q(x)
        stale, _ = strip_quantization(copy.deepcopy(q))
        twin = float_export_model(q)
        # the stale float weights are another network; the twin differs from the QAT model by rounding only
        assert (stale.eval()(x) - qat).abs().max() > 10 * (twin(x) - qat).abs().max()
        assert torch.allclose(twin(x), qat, atol=0.05 * float(qat.abs().max()))


def test_clip_to_quantizer_range_moves_only_weights_outside_the_range_and_is_idempotent():
    q = _qat_net()
    before = {n: q.get_submodule(n).parametrizations.weight.original.clone() for n in bit_choices(q)}
    moved = clip_to_quantizer_range(q)
    assert moved > 0
    for name, w0 in before.items():
        w = q.get_submodule(name).parametrizations.weight.original
        assert torch.equal(w[1:], w0[1:])  # the rows left in range are untouched
        assert not torch.equal(w[0], w0[0])
    assert clip_to_quantizer_range(q) == 0
