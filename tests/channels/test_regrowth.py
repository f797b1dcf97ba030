"""Function-preserving regrowth: channels the measured landing switches back on start silent."""
import pytest
import torch

from pluto.decisions.channels import DependencyGraph, attach_gates
from pluto.models import create_model


@pytest.mark.parametrize("name,kwargs", [("small_cnn", {}), ("resnet20", {"in_channels": 1}),
                                         ("mobilenet_v2", {"in_channels": 1})])
def test_silenced_regrown_channels_leave_the_function_unchanged(name, kwargs):
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    for m in model.modules():  # a trained-looking network: BN statistics and affine terms away from identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(2, 1, 28, 28)
    graph = DependencyGraph.build(model, x)
    gates = attach_gates(model, graph)
    gates.set_mode("hard")
    keep = torch.rand(graph.num_channels) > 0.4
    gates.set_keep(keep)
    with torch.no_grad():
        searched = model(x)
        grown = (torch.rand(graph.num_channels) > 0.5) & ~keep
        gates.set_keep(keep | grown)
        assert not torch.allclose(model(x), searched)  # regrown channels change the output ...
        assert gates.silence(model, grown) > 0
        torch.testing.assert_close(model(x), searched)  # ... until their consumers are silenced
    # the silenced channels still exist (the chip pays for them) and can learn: their weights get gradients
    assert int(gates.hard_flat().sum()) == int((keep | grown).sum())
    model(x).sum().backward()


def test_silence_checks_its_mask_size():
    model = create_model("small_cnn")
    graph = DependencyGraph.build(model, torch.randn(1, 1, 28, 28))
    gates = attach_gates(model, graph)
    with pytest.raises(Exception, match="channels has 3 entries"):
        gates.silence(model, torch.ones(3, dtype=torch.bool))
