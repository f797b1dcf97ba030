"""int8 weight type per chip: s8 (U8S8 kernels) with VNNI/AMX, u8 (U8U8) without; env and argument override it."""
import numpy as np
import pytest
import torch
from torch import nn

from pluto.cost.machine import INT8_WEIGHTS_ENV, has_vnni, int8_weight_type, int8_weights_mismatch
from pluto.cost.runtimes import Runtime, export_onnx, quantize_qdq
from pluto.errors import ConfigError

AVX2 = {"flags": ["sse4_2", "avx", "avx2", "fma", "f16c"]}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(INT8_WEIGHTS_ENV, raising=False)


@pytest.mark.parametrize("flags,expected", [
    (AVX2["flags"], "u8"), (AVX2["flags"] + ["avx512f", "avx512bw"], "u8"), (AVX2["flags"] + ["avx512_vnni"], "s8"),
    (AVX2["flags"] + ["avx_vnni"], "s8"), (AVX2["flags"] + ["amx_tile", "amx_int8"], "s8"), (["asimd"], "u8")])
def test_weight_type_follows_the_cpu_flags(flags, expected):
    assert int8_weight_type(facts={"flags": flags}) == expected


def test_environment_and_argument_override_the_flags(monkeypatch):
    assert int8_weight_type("s8", facts=AVX2) == "s8"
    monkeypatch.setenv(INT8_WEIGHTS_ENV, "s8")
    assert int8_weight_type(facts=AVX2) == "s8"
    assert int8_weight_type("u8", facts=AVX2) == "u8"  # the argument wins over the environment
    monkeypatch.setenv(INT8_WEIGHTS_ENV, "UINT8")
    assert int8_weight_type() == "u8"
    monkeypatch.setenv(INT8_WEIGHTS_ENV, "")  # empty: not set
    assert int8_weight_type(facts=AVX2) == "u8"
    with pytest.raises(ConfigError, match="s8, u8"):
        int8_weight_type("int4")
    monkeypatch.setenv(INT8_WEIGHTS_ENV, "fp16")
    with pytest.raises(ConfigError, match=INT8_WEIGHTS_ENV):
        int8_weight_type()


def _weight_zero_point_types(model_bytes: bytes) -> set:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(model_bytes).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return {inits[n.input[2]].dtype for n in graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 4}


def test_profiler_quantization_uses_the_same_weight_type(monkeypatch):
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)).eval()
    x = (torch.randn(1, 8, 12, 12),)
    fp32 = export_onnx(model, x)
    assert _weight_zero_point_types(quantize_qdq(fp32, x, "s8")) == {np.dtype(np.int8)}
    assert _weight_zero_point_types(quantize_qdq(fp32, x, "u8")) == {np.dtype(np.uint8)}
    here = np.int8 if has_vnni() else np.uint8
    assert _weight_zero_point_types(quantize_qdq(fp32, x)) == {np.dtype(here)}
    monkeypatch.setenv(INT8_WEIGHTS_ENV, "u8")
    assert _weight_zero_point_types(quantize_qdq(fp32, x)) == {np.dtype(np.uint8)}


def test_runtime_describe_records_the_weight_type(monkeypatch):
    pytest.importorskip("onnxruntime")
    info = Runtime("onnxruntime").describe()
    assert info["int8_weights"] == int8_weight_type() and ("U8S8" if has_vnni() else "U8U8") in info["int8"]
    monkeypatch.setenv(INT8_WEIGHTS_ENV, "u8")
    info = Runtime("onnxruntime").describe()
    assert info["int8_weights"] == "u8" and "uint8 weights (U8U8 kernels)" in info["int8"]
    assert "int8_weights" not in Runtime("torch").describe()


def test_a_table_priced_with_other_int8_weights_is_named():
    meta = {"name": "t", "precisions": ["fp32", "int8"], "runtime": {"int8_weights": "u8"}}
    assert int8_weights_mismatch(meta, "u8") is None
    line = int8_weights_mismatch(meta, "s8")
    assert "U8U8" in line and f"{INT8_WEIGHTS_ENV}=u8" in line
    assert int8_weights_mismatch({"name": "old", "runtime": {"int8": "static QDQ"}}, "s8") is None  # not recorded
    assert int8_weights_mismatch({**meta, "precisions": ["fp32"]}, "s8") is None


def test_untrained_networks_are_timed_as_trained_int8_fuses_every_conv(tmp_path):
    """An untrained network's BNs all fold to the same zero bias; the exporter shares it and onnxruntime then leaves
    18 of ResNet-20's 21 int8 convs unfused (fp32 Conv between Q/DQ, 2-5x slower). Timed networks are exported
    with trained-like BatchNorms, so every conv runs as QLinearConv; the caller's model is not changed."""
    from pluto.cost.profiler import network_onnx
    from pluto.materialize.export import optimized_op_types
    from pluto.models import create_model

    model = create_model("resnet20", num_classes=10, in_channels=1).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 1, 28, 28)
    raw, timed = tmp_path / "raw.onnx", tmp_path / "timed.onnx"
    raw.write_bytes(quantize_qdq(export_onnx(model, (x,)), (x,)))
    timed.write_bytes(network_onnx(model, x, "int8"))
    assert optimized_op_types(raw).get("Conv", 0) > 0  # the artifact this guards against
    ops = optimized_op_types(timed)
    assert ops.get("Conv", 0) == 0 and ops["QLinearConv"] == 21
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_an_s8_table_on_a_chip_without_vnni_is_never_told_to_deploy_s8(monkeypatch):
    """U8S8 saturates without VNNI: the note on an s8 table there points to calibrate / profiling, not to forcing s8;
    with VNNI the override is a fair suggestion. machine_notes gathers it for CPU tables only."""
    import pluto.cost.machine as machine

    meta = {"name": "amx", "precisions": ["fp32", "int8"], "runtime": {"int8_weights": "s8"}}
    monkeypatch.setattr(machine, "has_vnni", lambda facts=None: False)
    line = machine.int8_weights_mismatch(meta, "u8")
    assert "saturates without VNNI" in line and f"{INT8_WEIGHTS_ENV}=s8" not in line and "profile int8 here" in line
    assert line in machine.machine_notes(meta)
    monkeypatch.setattr(machine, "has_vnni", lambda facts=None: True)
    assert f"{INT8_WEIGHTS_ENV}=s8" in machine.int8_weights_mismatch(meta, "u8")
    assert machine.machine_notes({**meta, "device": {"type": "cuda"}}) == []
