"""prepare_qat / calibrate / harden_bits / strip_quantization / ptq on real registry models."""
import copy

import pytest
import torch
from torch import nn

from pluto.decisions.bits import (bit_choices, bit_logits, bit_probabilities, calibrate, chosen_bits, conv_bn_pairs,
                                  expected_bits, fold_bn, harden_bits, prepare_from_state_dict, prepare_qat, ptq,
                                  quantizable_layers, set_bit_mode, strip_quantization)
from pluto.errors import ConfigError, UnsupportedModelError
from pluto.models import create_model


def _model(name="small_cnn", **kw):
    torch.manual_seed(0)
    m = create_model(name, **kw)
    x = torch.randn(32, 1, 28, 28)
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.momentum = None  # cumulative average: running stats = this batch's stats
    with torch.no_grad():  # realistic BN statistics, so eval-mode calibration matches training activations
        m.train()(x)
    return m.eval(), x


def test_conv_bn_pairs_found_by_tracing():
    m, _ = _model()
    assert conv_bn_pairs(m) == {"features.0.0": "features.0.1", "features.1.0": "features.1.1",
                                "features.3.0": "features.3.1", "features.4.0": "features.4.1",
                                "features.6.0": "features.6.1"}
    r = create_model("resnet18")
    pairs = conv_bn_pairs(r)
    assert pairs["conv1"] == "bn1" and pairs["layer2.0.downsample.0"] == "layer2.0.downsample.1"


def test_fold_bn_is_exact_in_eval():
    m, x = _model()
    folded = fold_bn(m)
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in folded.modules())
    assert torch.allclose(folded(x), m(x), atol=1e-5)


def test_prepare_keeps_names_classes_and_other_hooks():
    m, x = _model()
    names_before = [n for n, mod in m.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    seen = []
    m.get_submodule("features.3.0").register_forward_hook(lambda mod, a, out: seen.append(out.shape[1]))
    q = prepare_qat(m, bits=(4, 8), calibrate=x)
    assert q is m
    assert quantizable_layers(q) == names_before == list(bit_choices(q))
    assert all(isinstance(q.get_submodule(n), nn.Conv2d | nn.Linear) for n in names_before)
    seen.clear()
    q(x)
    assert seen == [64]  # e.g. a channel gate hooked on the same conv still runs


def test_bit_probabilities_feed_a_differentiable_cost():
    m, x = _model()
    q = prepare_qat(m, bits=(4, 8, 32), calibrate=x)
    probs = bit_probabilities(q)
    assert set(probs["features.0.0"]) == {"int4", "int8", "fp32"}
    latency = {"int4": 1.0, "int8": 1.0, "fp32": 3.0}
    cost = sum(p[k] * latency[k] for p in probs.values() for k in p) + sum(expected_bits(q).values())
    cost.backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in bit_logits(q))


def test_training_step_updates_steps_and_weights():
    m, x = _model()
    q = prepare_qat(m, bits=8, calibrate=x)
    q.train()
    loss = nn.functional.cross_entropy(q(x), torch.zeros(len(x), dtype=torch.long))
    loss.backward()
    choice = bit_choices(q)["features.1.0"]
    assert choice.weight_quantizers["8"].step.grad.abs().sum() > 0
    assert choice.input_quantizers["8"].step.grad.abs().sum() > 0
    assert q.get_submodule("features.1.0").parametrizations.weight.original.grad.abs().sum() > 0


def test_harden_then_strip_returns_float_model_and_bits():
    m, x = _model()
    reference = m(x)
    keys = list(m.state_dict())
    q = prepare_qat(copy.deepcopy(m), bits=(4, 8), calibrate=x)
    with torch.no_grad():
        bit_choices(q)["classifier.2"].alpha.copy_(torch.tensor([0.0, 1.0]))
    bits = harden_bits(q)
    assert bits["classifier.2"] == 8 and bits["features.0.0"] == 4
    assert chosen_bits(q) == bits
    stripped, kept = strip_quantization(q)
    assert kept == bits and list(stripped.state_dict()) == keys
    assert torch.allclose(stripped(x), reference)
    again = prepare_qat(stripped, bits=kept, calibrate=x)  # re-prepare from the kept bits
    assert chosen_bits(again) == bits


def test_stripping_a_deep_copy_leaves_the_original_working():
    m, x = _model()
    q = prepare_qat(m, bits=8, calibrate=x)
    expected = q(x)
    strip_quantization(copy.deepcopy(q))
    assert torch.equal(q(x), expected)


def test_set_bit_mode_and_state_dict_round_trip():
    m, x = _model()
    q = prepare_qat(m, bits=(4, 8, 32), calibrate=x)
    set_bit_mode(q, mode="gumbel", temperature=0.5)
    assert all(c.mode == "gumbel" and c.temperature == 0.5 for c in bit_choices(q).values())
    harden_bits(q)
    loaded = prepare_from_state_dict(create_model("small_cnn"), q.state_dict()).eval()
    assert chosen_bits(loaded) == chosen_bits(q)
    assert torch.equal(loaded(x), q.eval()(x))


def test_ptq_is_close_to_float_and_leaves_model_untouched():
    m, x = _model()
    before = copy.deepcopy(m.state_dict())
    q8 = ptq(m, x, bits=8)
    assert not bit_choices(m) and all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    ref = m(x)
    err8 = (q8(x) - ref).abs().max() / ref.abs().max()
    err4 = (ptq(m, x, bits=4)(x) - ref).abs().max() / ref.abs().max()
    assert err8 < 0.05 and err8 < err4


def test_calibrate_initializes_all_quantizers():
    m, x = _model()
    q = prepare_qat(m, bits=(4, 8))
    assert not any(bool(qz.initialized) for c in bit_choices(q).values() for qz in c.input_quantizers.values())
    calibrate(q, [(x[:16], None), (x[16:], None)])
    assert all(bool(qz.initialized) for c in bit_choices(q).values()
               for qz in [*c.input_quantizers.values(), *c.weight_quantizers.values()])


def test_bad_bits_specs_raise_clear_errors():
    m, _ = _model()
    with pytest.raises(UnsupportedModelError, match="BatchNorm2d"):
        prepare_qat(m, bits={"features.0.1": 8})
    with pytest.raises(ConfigError, match="does not have"):
        prepare_qat(m, bits={"features.99": 8})
    with pytest.raises(ConfigError, match="bit-width"):
        prepare_qat(m, bits=(3, 8))
    prepare_qat(m, bits=8)
    with pytest.raises(ConfigError, match="already prepared"):
        prepare_qat(m, bits=8)


def test_mobilenet_v2_prepares_all_convs_including_depthwise():
    m = create_model("mobilenet_v2")
    q = prepare_qat(m, bits=(4, 8), example_input=torch.randn(4, 1, 28, 28))
    assert len(bit_choices(q)) == len(quantizable_layers(create_model("mobilenet_v2"))) == 53
    assert sum(c.bn is not None for c in bit_choices(q).values()) == 52


def test_a_checkpoint_loads_with_exactly_the_output_quantizers_it_saved():
    """The rule that places output quantizers changed (2026-12-07: also before layers that may run in float); a
    checkpoint saved under another rule must still load, with its own set of them, not the current rule's."""
    import torch

    from pluto.decisions.bits import bit_choices, prepare_qat
    from pluto.decisions.bits.prepare import prepare_from_state_dict
    from pluto.models import create_model

    torch.manual_seed(0)
    saved = prepare_qat(create_model("small_cnn"), bits=(8, 32), example_input=torch.randn(4, 1, 28, 28),
                        quantize_outputs={"features.0.0"})  # a set the current rule would not produce
    assert {n for n, c in bit_choices(saved).items() if c.output_quantizer is not None} == {"features.0.0"}
    state = saved.state_dict()
    loaded = prepare_from_state_dict(create_model("small_cnn"), state)
    assert {n for n, c in bit_choices(loaded).items() if c.output_quantizer is not None} == {"features.0.0"}
    assert set(loaded.state_dict()) == set(state)
    current = prepare_qat(create_model("small_cnn"), bits=(8, 32), example_input=torch.randn(4, 1, 28, 28))
    assert {n for n, c in bit_choices(current).items() if c.output_quantizer is not None} != {"features.0.0"}
