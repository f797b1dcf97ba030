import pytest
import torch
import torch.fx

from pluto.decisions.ops import ChildNet, OpChoice, Supernet, build_child, derive
from pluto.errors import ConfigError


def _randomize(net: Supernet, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for alpha in net.arch_parameters():
            alpha.copy_(torch.randn(alpha.shape, generator=g))


@pytest.mark.parametrize("preset", ["tiny_28", "resnet_32"])
@pytest.mark.parametrize("train", [False, True])
def test_derived_equals_hard_supernet(preset, train):
    torch.manual_seed(0)
    net = Supernet(preset)
    _randomize(net)
    net.set_mode("hard")
    net.train(train)
    child = derive(net)
    child.train(train)
    x = torch.randn(4, net.config.in_channels, net.config.input_size, net.config.input_size)
    torch.testing.assert_close(child(x), net(x))
    assert not any(isinstance(m, OpChoice) for m in child.modules())
    assert child.architecture == net.architecture()


def test_derived_names_are_stable_and_readable():
    net = Supernet("tiny_28")
    net.fix_architecture({"stages.0.0": "mb_k5_e6", "stages.0.1": "skip", "stages.1.0": "mb_k3_e3",
                          "stages.1.1": "mb_k5_e3"})
    child = derive(net)
    names = dict(child.named_modules())
    assert "stages.0.0.depthwise.conv" in names and names["stages.0.0.depthwise.conv"].kernel_size == (5, 5)
    assert type(names["stages.0.1"]).__name__ == "Identity"
    assert "stages.1.1.expand.conv" in names
    assert not any(".candidates." in n for n in names)
    # the derived weights are copies taken from the chosen candidate
    chosen = net.choice_blocks()["stages.1.1"].candidates[net.choice_blocks()["stages.1.1"].names.index("mb_k5_e3")]
    torch.testing.assert_close(child.stages[1][1].expand.conv.weight, chosen.expand.conv.weight)
    assert child.stages[1][1].expand.conv.weight.data_ptr() != chosen.expand.conv.weight.data_ptr()


def test_derived_is_fx_traceable_and_smaller():
    net = Supernet("tiny_28")
    child = derive(net)
    torch.fx.symbolic_trace(child)
    assert sum(p.numel() for p in child.parameters()) < sum(p.numel() for p in net.weight_parameters())


def test_build_child_loads_derived_state():
    net = Supernet("tiny_28")
    _randomize(net, 3)
    child = derive(net).eval()
    rebuilt = build_child("tiny_28", child.architecture)
    rebuilt.load_state_dict(child.state_dict())
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(rebuilt.eval()(x), child(x))
    assert isinstance(rebuilt, ChildNet)


def test_bad_architectures_raise():
    net = Supernet("tiny_28")
    with pytest.raises(ConfigError):
        derive(net, {"stages.0.0": "mb_k3_e3"})  # missing blocks
    arch = net.architecture()
    with pytest.raises(ConfigError):
        build_child("tiny_28", {**arch, "stages.0.0": "skip"})  # stride-2 block cannot be skipped
    with pytest.raises(ConfigError):
        net.fix_architecture({"stages.9.9": "skip"})


def test_derived_network_exports_to_onnx_and_matches(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from pluto.materialize.export import export_onnx

    torch.manual_seed(0)
    net = Supernet("tiny_28")
    _randomize(net, 5)
    child = derive(net).eval()
    x = torch.randn(3, 1, 28, 28)
    path = export_onnx(child, x[:1], tmp_path / "child.onnx", int8=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), child(x), atol=1e-4, rtol=1e-4)
