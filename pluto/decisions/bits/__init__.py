"""Bit-width decisions: learned-step fake quantization (LSQ) and a per-layer choice of precision.

Typical use (the ``prepare -> train -> convert`` pattern)::

    from pluto.decisions.bits import prepare_qat, bit_probabilities, harden_bits, strip_quantization
    qmodel = prepare_qat(model, bits=(4, 8), calibrate=calib_images)   # in place, names preserved
    ...train; the cost model reads bit_probabilities(qmodel) / expected_bits(qmodel)...
    bits = harden_bits(qmodel)                                         # {'features.0.0': 8, ...}
    pluto.materialize.export.export_onnx(qmodel, x, "model.int8.onnx")

Modules: ``quantizer`` (LsqQuantizer, STE helpers), ``choice`` (BitWidthChoice), ``folding``
(conv->BN pairs, BN folding), ``prepare`` (model-level transforms, calibration, PTQ).
"""
from pluto.decisions.bits.choice import MODES, PRECISION_OF_BITS, SUPPORTED_BITS, BitWidthChoice
from pluto.decisions.bits.folding import conv_bn_pairs, fold_bn
from pluto.decisions.bits.prepare import (bit_choices, bit_logits, bit_probabilities, calibrate, chosen_bits,
                                          expected_bits, harden_bits, is_qat_state_dict, prepare_from_state_dict,
                                          prepare_qat, ptq, quantizable_layers,
                                          set_bit_mode, strip_quantization)
from pluto.decisions.bits.quantizer import LsqQuantizer, fp16_ste, grad_scale, round_ste

__all__ = [
    "BitWidthChoice", "LsqQuantizer", "prepare_qat", "calibrate", "ptq", "bit_choices", "bit_logits",
    "bit_probabilities", "expected_bits", "harden_bits", "chosen_bits", "set_bit_mode", "strip_quantization",
    "quantizable_layers", "prepare_from_state_dict", "is_qat_state_dict", "conv_bn_pairs", "fold_bn", "round_ste", "grad_scale", "fp16_ste",
    "SUPPORTED_BITS", "PRECISION_OF_BITS", "MODES",
]
