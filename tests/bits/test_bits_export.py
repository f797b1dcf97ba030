"""int8 QDQ ONNX export: onnxruntime runs real int8 kernels and agrees with the fake-quant model."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from pluto.cli import main as cli_main
from pluto.decisions.bits import harden_bits, prepare_qat, ptq
from pluto.errors import ConfigError, UnsupportedModelError
from pluto.materialize.export import export_onnx, onnx_session, optimized_op_types, run_onnx
from pluto.models import create_model


def _fmnist(n_train=1024, n_test=1000):
    from pluto.data import load_fashion_mnist
    try:
        train, test = load_fashion_mnist(True, limit=n_train), load_fashion_mnist(False, limit=n_test)
    except Exception as exc:  # DataError when the package is absent
        pytest.skip(f"Fashion-MNIST not installed: {exc}")
    return train.tensors, test.tensors


def _trained_small_cnn(x, y, epochs=1, width=0.5):
    torch.manual_seed(0)
    model = create_model("small_cnn", width=width)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for i in range(0, len(x), 64):
            loss = nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _qat(model, x, y, calibrate, images):
    """8-bit QAT of ``model``: calibrated on ``calibrate`` images, fine-tuned on ``images`` (batch 64)."""
    qat = prepare_qat(model, bits=8, calibrate=x[:calibrate], mode="hard")
    opt = torch.optim.Adam(qat.parameters(), lr=1e-4)
    qat.train()
    for i in range(0, images, 64):
        loss = nn.functional.cross_entropy(qat(x[i:i + 64]), y[i:i + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return qat


def _parity(qmodel, x, path, weight_type=None):
    export_onnx(qmodel, x[:1], path, weight_type=weight_type)
    with torch.no_grad():
        fake = qmodel.eval()(x).numpy()
    onnx = run_onnx(onnx_session(path), x)
    return float((onnx.argmax(1) == fake.argmax(1)).mean()), float(np.abs(onnx - fake).max()), float(np.abs(fake).max())


def test_int8_export_agrees_with_fake_quant_and_runs_int8_kernels(tmp_path):
    (xtr, ytr), (xte, _) = _fmnist()
    model = _trained_small_cnn(xtr, ytr)
    qmodel = ptq(model, xtr[:256], bits=8)
    agree, max_err, scale = _parity(qmodel, xte, tmp_path / "m.int8.onnx")
    assert agree >= 0.99
    assert max_err < 0.02 * scale
    ops = optimized_op_types(tmp_path / "m.int8.onnx")
    assert ops.get("QLinearConv", 0) >= 4  # 4 of 5 convs feed a quantized consumer and fuse to int8 kernels
    report = json.loads((tmp_path / "m.int8.json").read_text())
    assert report["simulated_layers"] == [] and report["int8_kernel_layers"] == 6


def test_fp32_export_matches_float_model(tmp_path):
    model = create_model("small_cnn", width=0.5).eval()
    x = torch.randn(16, 1, 28, 28)
    export_onnx(model, x[:1], tmp_path / "m.fp32.onnx", int8=False)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(run_onnx(onnx_session(tmp_path / "m.fp32.onnx"), x) - ref).max() < 1e-4


def test_mixed_4_8_32_export_flags_4bit_as_simulated(tmp_path):
    torch.manual_seed(0)
    model = create_model("small_cnn", width=0.5).eval()
    x = torch.randn(64, 1, 28, 28)
    qmodel = prepare_qat(model, bits=(4, 8, 32), calibrate=x)
    names = list(harden_bits(qmodel))
    bits = harden_bits(qmodel, {n: b for n, b in zip(names, [8, 4, 4, 8, 32, 8])})
    agree, max_err, scale = _parity(qmodel, x, tmp_path / "mixed.onnx")
    assert max_err < 0.02 * scale
    report = {r["name"]: r for r in json.loads((tmp_path / "mixed.json").read_text())["layers"]}
    assert [report[n]["bits"] for n in names] == list(bits.values())
    assert report[names[1]]["simulated"] and report[names[1]]["kernel"] == "int8"
    assert not report[names[0]]["simulated"] and report[names[4]]["kernel"] == "fp32"


def test_export_of_float_model_as_int8_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="ptq"):
        export_onnx(create_model("small_cnn"), torch.zeros(1, 1, 28, 28), tmp_path / "x.onnx")


def test_unsupported_layer_for_int8_export_is_a_clear_error(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 2))
    q = prepare_qat(model, bits=8, calibrate=torch.randn(8, 1, 8, 8))
    with pytest.raises(UnsupportedModelError, match="padding"):
        export_onnx(q, torch.zeros(1, 1, 8, 8), tmp_path / "x.onnx")
    with pytest.raises(UnsupportedModelError, match="ConvTranspose2d"):
        prepare_qat(nn.Sequential(nn.ConvTranspose2d(1, 2, 3)), bits={"0": 8})


def test_cli_export_writes_both_files_and_verifies(tmp_path, capsys):
    rc = cli_main(["export", "--model", "small_cnn", "--data", "synthetic", "--out", str(tmp_path),
                   "--calib", "64", "--verify", "64"])
    assert rc == 0
    assert (tmp_path / "model.fp32.onnx").is_file() and (tmp_path / "model.int8.onnx").is_file()
    summary = json.loads((tmp_path / "export.json").read_text())
    assert summary["quantization"] == "ptq8" and summary["verify"]["images"] == 64
    assert "int8_vs_fakequant_top1_agreement" in capsys.readouterr().out


def test_cli_export_of_a_qat_checkpoint(tmp_path):
    model = create_model("small_cnn")
    q = prepare_qat(model, bits=(4, 8), calibrate=torch.randn(32, 1, 28, 28))
    harden_bits(q)
    torch.save({"model": q.state_dict()}, tmp_path / "model.pt")
    rc = cli_main(["export", "--model", "small_cnn", "--checkpoint", str(tmp_path / "model.pt"), "--data", "synthetic",
                   "--out", str(tmp_path / "out"), "--verify", "32"])
    assert rc == 0
    summary = json.loads((tmp_path / "out" / "export.json").read_text())
    assert summary["quantization"] == "qat" and {layer["bits"] for layer in summary["layers"]} == {4}


def test_cli_missing_checkpoint_is_a_clean_error(tmp_path, capsys):
    rc = cli_main(["export", "--model", "small_cnn", "--checkpoint", str(tmp_path / "nope.pt"), "--data", "synthetic",
                   "--out", str(tmp_path)])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_full_fashion_mnist_int8_parity(tmp_path):
    """The acceptance check: >= 99% top-1 agreement on all 10k test images (trained model, PTQ and QAT)."""
    (xtr, ytr), (xte, _) = _fmnist(n_train=20000, n_test=10000)
    model = _trained_small_cnn(xtr, ytr, epochs=1, width=1.0)
    qmodel = ptq(model, xtr[:512], bits=8)
    agree, max_err, scale = _parity(qmodel, xte, tmp_path / "ptq.onnx")
    print(f"PTQ int8: agreement {agree:.4f}, max |logit err| {max_err:.2e} (max |logit| {scale:.2f})")
    assert agree >= 0.99
    qat = _qat(model, xtr, ytr, calibrate=512, images=5000)
    agree, max_err, scale = _parity(qat, xte, tmp_path / "qat.onnx")
    print(f"QAT int8: agreement {agree:.4f}, max |logit err| {max_err:.2e} (max |logit| {scale:.2f})")
    assert agree >= 0.99


def _dequantized_weights(path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and len(node.input) > 2:
            w, s, z = inits[node.input[0]], inits[node.input[1]], inits[node.input[2]]
            shape = [-1] + [1] * (w.ndim - 1) if s.ndim else []
            out[node.input[0]] = (w.astype(np.float64) - z.reshape(shape)) * s.reshape(shape), w.dtype
    return out


def test_int8_export_uses_uint8_weights_and_old_files_convert_to_the_same_values(tmp_path):
    """U8S8 kernels saturate on AVX2 CPUs without VNNI; pluto writes U8U8 there and converts int8-weight files."""
    from pluto.cost.runtimes import export_onnx as export_fp32
    from pluto.materialize.export import weights_to_uint8
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    torch.manual_seed(0)
    model = create_model("small_cnn").eval()
    path = export_onnx(ptq(model, torch.randn(32, 1, 28, 28)), torch.randn(1, 1, 28, 28), tmp_path / "q.onnx",
                       weight_type="u8")
    zero_points = _weight_zero_points(path)
    assert len(zero_points) == 6
    for _, zero_point in zero_points.values():
        assert zero_point.dtype == np.uint8 and (zero_point == 128).all()
    assert weights_to_uint8(path) == 0  # nothing left to convert

    (tmp_path / "f.onnx").write_bytes(export_fp32(model, (torch.randn(1, 1, 28, 28),)))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x0": np.random.rand(1, 1, 28, 28).astype(np.float32)} for _ in range(2)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(tmp_path / "f.onnx"), str(tmp_path / "s8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    before = {k: v for k, v in _dequantized_weights(tmp_path / "s8.onnx").items() if v[1] == np.int8}
    assert len(before) == 6
    assert weights_to_uint8(tmp_path / "s8.onnx", tmp_path / "u8.onnx") == len(before)
    after = _dequantized_weights(tmp_path / "u8.onnx")
    for name, (values, _) in before.items():
        assert after[name][1] == np.uint8
        np.testing.assert_allclose(after[name][0], values, rtol=0, atol=1e-7)


@pytest.mark.parametrize("weight_type", ["u8", "s8"])
def test_qat_int8_export_matches_pytorch_for_both_weight_types(tmp_path, weight_type):
    """Both weight types compute what the QAT model computes where their kernels are exact (U8S8 needs VNNI/AMX)."""
    from pluto.cost.machine import has_vnni

    if weight_type == "s8" and not has_vnni():
        pytest.skip("U8S8 kernels saturate int16 partial sums on this CPU (no VNNI/AMX): s8 is not exact here")
    (xtr, ytr), (xte, _) = _fmnist()
    model = _trained_small_cnn(xtr, ytr)
    qat = _qat(model, xtr, ytr, calibrate=256, images=512)
    agree, max_err, scale = _parity(qat, xte, tmp_path / "m.int8.onnx", weight_type)
    assert agree >= 0.99
    assert max_err < 0.02 * scale
    assert optimized_op_types(tmp_path / "m.int8.onnx").get("QLinearConv", 0) >= 4
    report = json.loads((tmp_path / "m.int8.json").read_text())
    assert report["int8_weights"] == weight_type and report["int8_kernels"] == {"u8": "U8U8", "s8": "U8S8"}[weight_type]
    zero_points = [zp for _, zp in _weight_zero_points(tmp_path / "m.int8.onnx").values()]
    assert zero_points and all(zp.dtype == {"u8": np.uint8, "s8": np.int8}[weight_type] for zp in zero_points)


def _weight_zero_points(path):
    """{weight name: (QuantizeLinear node, zero point array)} of a pluto QDQ file."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}
    consts.update({i.name: numpy_helper.to_array(i) for i in graph.initializer})
    produced = {o: n for n in graph.node for o in n.output}

    def const(name):
        while name in produced and produced[name].op_type == "Identity":
            name = produced[name].input[0]
        return consts[name]

    return {n.input[0]: (n, const(n.input[2])) for n in graph.node
            if n.op_type == "QuantizeLinear" and n.input[0].endswith("weight")}


def test_weight_type_follows_the_chip_env_and_argument(tmp_path, monkeypatch):
    from pluto.cost.machine import has_vnni, int8_weight_type
    from pluto.materialize.export import weights_to_uint8

    torch.manual_seed(0)
    qmodel = ptq(create_model("small_cnn", width=0.5).eval(), torch.randn(32, 1, 28, 28))
    x = torch.randn(1, 1, 28, 28)
    monkeypatch.delenv("PLUTO_INT8_WEIGHTS", raising=False)
    export_onnx(qmodel, x, tmp_path / "auto.onnx")
    assert json.loads((tmp_path / "auto.json").read_text())["int8_weights"] == int8_weight_type()
    monkeypatch.setenv("PLUTO_INT8_WEIGHTS", "u8")
    export_onnx(qmodel, x, tmp_path / "env.onnx")
    assert json.loads((tmp_path / "env.json").read_text())["int8_weights"] == "u8"
    export_onnx(qmodel, x, tmp_path / "s8.onnx", weight_type="s8")  # the argument wins over the environment
    s8 = _weight_zero_points(tmp_path / "s8.onnx")
    assert len(s8) == 6 and all(zp.dtype == np.int8 and (zp == 0).all() for _, zp in s8.values())
    monkeypatch.setenv("PLUTO_INT8_WEIGHTS", "fp8")
    with pytest.raises(ConfigError, match="PLUTO_INT8_WEIGHTS"):
        export_onnx(qmodel, x, tmp_path / "bad.onnx")
    # an s8 file made on a VNNI machine converts to the same values in uint8 for an AVX2-only CPU
    assert weights_to_uint8(tmp_path / "s8.onnx", tmp_path / "u8.onnx") == 6
    assert all(zp.dtype == np.uint8 and (zp == 128).all() for _, zp in _weight_zero_points(tmp_path / "u8.onnx").values())
    xs = torch.rand(16, 1, 28, 28)
    u8 = run_onnx(onnx_session(tmp_path / "env.onnx"), xs)
    np.testing.assert_allclose(run_onnx(onnx_session(tmp_path / "u8.onnx"), xs), u8, rtol=0, atol=1e-5)
    if has_vnni():  # U8S8 is exact here: the same values compute the same logits
        np.testing.assert_allclose(run_onnx(onnx_session(tmp_path / "s8.onnx"), xs), u8, rtol=0, atol=1e-5)


def test_an_int8_layer_before_an_fp32_layer_still_runs_int8_kernels(tmp_path):
    """Per-layer bits alternating int8 / fp32: every int8 conv gets a Quantize after it (its consumer runs in
    float and will not quantize), so onnxruntime fuses each into QLinearConv instead of running it as an fp32 Conv
    between Q/DQ (slower than fp32)."""
    import onnxruntime

    from pluto.decisions.bits import ptq
    from pluto.decisions.bits.prepare import quantizable_layers
    from pluto.materialize.export import export_onnx, optimized_op_types
    from pluto.models import create_model

    onnxruntime.set_default_logger_severity(3)
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", num_classes=10, in_channels=1).eval()
    layers = quantizable_layers(model)
    bits = {name: 8 if i % 2 == 0 else 32 for i, name in enumerate(layers)}
    qmodel = ptq(model, torch.randn(8, 1, 28, 28), bits=bits, batches=1, method="minmax")
    ops = optimized_op_types(export_onnx(qmodel, torch.randn(1, 1, 28, 28), tmp_path / "m.onnx", int8=True))
    int8_convs = sum(1 for name, b in bits.items() if b == 8 and isinstance(model.get_submodule(name), torch.nn.Conv2d))
    assert ops.get("QLinearConv", 0) >= int8_convs
