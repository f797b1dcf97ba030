"""pluto.save / pluto.load: compressed models restored without their run folder, ONNX-identical."""
import json

import numpy as np
import pytest
import torch
from torch import nn

import pluto
from pluto.decisions.bits import bit_choices, bit_logits
from pluto.decisions.ops import Supernet
from pluto.errors import ConfigError
from pluto.materialize.export import export_onnx, onnx_session, run_onnx
from pluto.materialize.saving import read_structure
from pluto.optimizer.decisions import attach, harden


def _hardened(model: nn.Module, prune: bool, quantize: bool, seed: int = 0) -> nn.Module:
    """Attach decisions, set them to a random mixture (some channels dropped, mixed bits, random ops), harden."""
    g = torch.Generator().manual_seed(seed)
    size = model.config.input_size if isinstance(model, Supernet) else 28
    example = torch.randn(2, 1, size, size, generator=g)
    calibration = torch.randn(16, 1, size, size, generator=g)
    decisions = attach(model, example, prune, quantize, (4, 8, 32), 0.95, calibration)
    with torch.no_grad():
        for p in decisions.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 3)
    final, _ = harden(decisions, example, calibration)
    return final.eval()


def _cases():
    torch.manual_seed(0)
    yield "dense", pluto.create_model("small_cnn", 10, 1, 28).eval()
    yield "pruned", _hardened(pluto.create_model("small_cnn", 10, 1, 28), prune=True, quantize=False)
    yield "quantized", _hardened(pluto.create_model("small_cnn", 10, 1, 28), prune=False, quantize=True)
    yield "pruned+quantized", _hardened(pluto.create_model("resnet18", 10, 1, 28), prune=True, quantize=True)
    yield "nas", _hardened(pluto.create_model("supernet", 10, 1, 28, space="tiny_28"), prune=False, quantize=False)
    yield "nas+quantized", _hardened(pluto.create_model("supernet", 10, 1, 28, space="tiny_28"), prune=False,
                                     quantize=True)


CASES = dict(_cases())


@pytest.mark.parametrize("kind", list(CASES))
def test_round_trip_restores_architecture_weights_and_bits(kind, tmp_path):
    model = CASES[kind]
    path = pluto.save(model, tmp_path / "model.pt")
    restored = pluto.load(path)
    assert type(restored) is type(model) and not restored.training
    assert {k: v.shape for k, v in restored.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    for key, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    assert {n: c.chosen_bits for n, c in bit_choices(restored).items()} == \
        {n: c.chosen_bits for n, c in bit_choices(model).items()}
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(restored(x), model(x), rtol=0, atol=0)
    quantized = bool(bit_choices(model))
    a = export_onnx(model, x[:1], tmp_path / "a.onnx", int8=quantized)
    b = export_onnx(restored, x[:1], tmp_path / "b.onnx", int8=quantized)
    import onnx

    ops = [[n.op_type for n in onnx.load(str(p)).graph.node] for p in (a, b)]
    assert ops[0] == ops[1]
    np.testing.assert_array_equal(run_onnx(onnx_session(a), x), run_onnx(onnx_session(b), x))


def test_decision_kinds_are_really_exercised():
    structure = {k: pluto.materialize.saving.describe(m) for k, m in CASES.items()}
    dense = structure["dense"]["layers"]
    pruned = structure["pruned"]["layers"]
    assert any(pruned[n]["out_channels"] < dense[n]["out_channels"] for n in dense if "out_channels" in dense[n])
    bits = {b["bits"] for b in structure["quantized"]["quantization"].values()}
    assert len(bits) >= 2  # mixed precision
    assert structure["nas"]["builder"]["kind"] == "nas_child"
    assert structure["nas+quantized"]["builder"]["kind"] == "nas_child" and structure["nas+quantized"]["quantization"]
    both = structure["pruned+quantized"]
    assert both["quantization"] and both["builder"]["name"] == "resnet18"
    full = pluto.materialize.saving.describe(pluto.create_model("resnet18", 10, 1, 28))["tensors"]
    assert any(both["tensors"][k]["shape"] != full[k]["shape"] for k in full)


def test_file_is_weights_only_plus_versioned_json(tmp_path):
    path = pluto.save(CASES["pruned+quantized"], tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)  # no code runs: tensors, strings, dicts
    assert set(payload) == {"model", "architecture"}
    structure = read_structure(path)
    assert structure["format"] == "pluto.model" and structure["version"] == 1


class MyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_user_model_needs_its_class_and_errors_are_clear(tmp_path):
    small = _hardened(MyNet(), prune=True, quantize=True, seed=1)
    path = pluto.save(small, tmp_path / "mine.pt")
    with pytest.raises(ConfigError, match="model="):
        pluto.load(path)
    restored = pluto.load(path, model=MyNet())
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(restored(x), small(x), rtol=0, atol=0)
    torch.save({"model": small.state_dict()}, tmp_path / "weights.pt")
    with pytest.raises(ConfigError, match="no architecture"):
        pluto.load(tmp_path / "weights.pt")
    payload = torch.load(path, weights_only=True)
    newer = json.loads(payload["architecture"])
    newer["version"] = 99
    torch.save({**payload, "architecture": json.dumps(newer)}, tmp_path / "newer.pt")
    with pytest.raises(ConfigError, match="newer pluto"):
        pluto.load(tmp_path / "newer.pt")
    with pytest.raises(ConfigError, match="layer"):
        pluto.load(path, model=pluto.create_model("small_cnn"))


def test_gated_model_is_refused(tmp_path):
    model = pluto.create_model("small_cnn")
    attach(model, torch.randn(2, 1, 28, 28), True, False, (8,))
    with pytest.raises(ConfigError, match="gates"):
        pluto.save(model, tmp_path / "x.pt")


def test_pluto_export_reads_a_saved_compressed_model_without_model_name(tmp_path):
    from pluto.cli import main as cli_main

    path = pluto.save(CASES["pruned+quantized"], tmp_path / "model.pt")
    rc = cli_main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "out"), "--data", "synthetic",
                   "--verify", "64"])
    assert rc == 0
    summary = json.loads((tmp_path / "out" / "export.json").read_text())
    assert summary["quantization"] == "qat" and summary["verify"]["int8_vs_fakequant_top1_agreement"] > 0.9


def test_a_saved_compressed_model_can_be_the_teacher(tmp_path):
    from pluto.optimizer.distillation import load_teacher

    model = CASES["pruned"]
    teacher = load_teacher(str(pluto.save(model, tmp_path / "model.pt")))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), model(x), rtol=0, atol=0)
    assert not any(p.requires_grad for p in teacher.parameters())
