import pytest
import torch
import torch.nn.functional as F

from pluto.decisions.ops import PRESETS, OpChoice, SpaceConfig, StageSpec, Supernet, TemperatureSchedule, space_config
from pluto.errors import ConfigError


@pytest.mark.parametrize("preset", ["mbconv_28", "mbconv_32", "resnet_28", "resnet_32"])
def test_forward_28_and_32_every_mode(preset):
    torch.manual_seed(0)
    net = Supernet(preset)
    c, h = net.config.in_channels, net.config.input_size
    assert (h, c) == ((28, 1) if preset.endswith("28") else (32, 3))
    x = torch.randn(2, c, h, h)
    for mode in ("hard", "sample"):
        net.set_mode(mode)
        assert net(x).shape == (2, 10)


def test_soft_and_gumbel_mixtures_match_shapes():
    net = Supernet("tiny_28")
    x = torch.randn(3, 1, 28, 28)
    for mode in ("soft", "gumbel"):
        net.set_mode(mode)
        assert net(x).shape == (3, 10)


@pytest.mark.parametrize("mode", ["soft", "gumbel", "sample"])
def test_arch_gradient_flows_to_every_logit(mode):
    torch.manual_seed(0)
    net = Supernet("tiny_28", mode=mode, temperature=1.0)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    F.cross_entropy(net(x), y).backward()
    if mode == "sample":
        # One sampled op scaled by a straight-through 1: a block without a residual feeds a BatchNorm that
        # normalises the scale away, so only residual blocks get a task gradient (hence 'soft' for the search).
        assert any(float(a.grad.abs().sum()) > 0 for a in net.arch_parameters() if a.grad is not None)
        return
    for name, alpha in zip(net.choice_blocks(), net.arch_parameters()):
        assert alpha.grad is not None and torch.isfinite(alpha.grad).all(), name
        assert alpha.grad.abs().sum() > 0, name
        assert (alpha.grad != 0).all(), name


def test_hard_mode_gives_no_arch_gradient():
    net = Supernet("tiny_28", mode="hard")
    F.cross_entropy(net(torch.randn(4, 1, 28, 28)), torch.zeros(4, dtype=torch.long)).backward()
    assert all(a.grad is None for a in net.arch_parameters())


def test_arch_and_weight_parameters_partition_all_parameters():
    net = Supernet("tiny_28")
    arch, weights = net.arch_parameters(), net.weight_parameters()
    assert len(arch) == len(net.choice_blocks()) == 4
    ids = {id(p) for p in arch} | {id(p) for p in weights}
    assert len(ids) == len(arch) + len(weights) == len(list(net.parameters()))


def test_choice_probabilities_are_distributions_named_by_block():
    net = Supernet("tiny_28")
    probs = net.choice_probabilities()
    assert list(probs) == ["stages.0.0", "stages.0.1", "stages.1.0", "stages.1.1"]
    for name, p in probs.items():
        assert torch.allclose(p.sum(), torch.tensor(1.0))
        assert p.shape == (len(net.choice_blocks()[name].names),)
    assert net.choice_blocks()["stages.0.1"].names[-1] == "skip"
    assert "skip" not in net.choice_blocks()["stages.0.0"].names  # stride 2, width change: not skippable


def test_skip_only_where_shapes_allow_and_all_skipped_still_runs():
    cfg = SpaceConfig(stem_width=16, stages=(StageSpec(16, 2, 1), StageSpec(24, 3, 2)), kernels=(3,), expansions=(3,),
                      head_width=0)
    net = Supernet(cfg)
    skippable = {n: "skip" in b.names for n, b in net.choice_blocks().items()}
    assert skippable == {"stages.0.0": True, "stages.0.1": True, "stages.1.0": False, "stages.1.1": True,
                         "stages.1.2": True}
    net.fix_architecture({n: "skip" for n, ok in skippable.items() if ok})
    net.set_mode("hard")
    assert net(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def test_temperature_schedule_anneals_exponentially():
    s = TemperatureSchedule(initial=5.0, final=0.5, steps=100)
    assert s(0) == pytest.approx(5.0) and s(100) == pytest.approx(0.5) and s(1000) == pytest.approx(0.5)
    assert s(50) == pytest.approx((5.0 * 0.5) ** 0.5)  # geometric mean halfway
    values = [s(t) for t in range(0, 101, 10)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_low_temperature_sharpens_probabilities():
    net = Supernet("tiny_28")
    block = net.choice_blocks()["stages.0.0"]
    with torch.no_grad():
        block.alpha.copy_(torch.tensor([0.5, 0.0, 0.0, 0.0]))
    net.set_temperature(5.0)
    p_hot = block.probabilities()[0].item()
    net.set_temperature(0.05)
    assert block.probabilities()[0].item() > 0.99 > p_hot


def test_config_from_dict_and_presets():
    cfg = space_config({"preset": "mbconv_32", "stages": [[16, 1, 1], {"width": 32, "depth": 2, "stride": 2}],
                        "kernels": [3, 5]})
    assert cfg.in_channels == 3 and cfg.input_size == 32 and cfg.kernels == (3, 5)
    assert cfg.stages == (StageSpec(16, 1, 1), StageSpec(32, 2, 2))
    assert space_config(cfg.to_dict()) == cfg
    assert set(PRESETS) >= {"mbconv_28", "mbconv_32", "resnet_28", "resnet_32"}


@pytest.mark.parametrize("bad", [{"family": "vit"}, {"kernels": [4]}, {"stages": [[16, 0, 1]]}, {"widthz": 3},
                                 {"stages": [[16, 1, 3]]}])
def test_bad_config_raises_config_error(bad):
    with pytest.raises(ConfigError):
        space_config(bad)


def test_bad_mode_and_temperature_raise():
    block = OpChoice([torch.nn.Identity()], ["skip"])
    with pytest.raises(ConfigError):
        block.mode = "argmax"
    with pytest.raises(ConfigError):
        block.temperature = 0.0
    with pytest.raises(ConfigError):
        block.fix("mb_k3_e3")


def test_fix_makes_choice_final_and_probabilities_exactly_one_hot():
    net = Supernet("tiny_28", temperature=5.0)
    net.fix_architecture({"stages.0.1": "skip"})
    block = net.choice_blocks()["stages.0.1"]
    assert block.mode == "hard" and net.choice_blocks()["stages.0.0"].mode == "soft"
    p = block.probabilities()
    assert p.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]
    p[0].backward()  # straight-through: the softmax's gradient still reaches alpha
    assert block.alpha.grad.abs().sum() > 0


def test_random_architecture_is_valid_and_seeded():
    net = Supernet("mbconv_28")
    a = net.random_architecture(torch.Generator().manual_seed(1))
    assert a == net.random_architecture(torch.Generator().manual_seed(1))
    assert all(choice in net.choice_blocks()[name].names for name, choice in a.items())
    assert len({tuple(net.random_architecture().values()) for _ in range(5)}) > 1


def test_on_path_runs_the_named_child_and_leaves_alpha_and_modes_alone():
    from pluto.decisions.ops import derive

    net = Supernet("tiny_28").eval()
    with torch.no_grad():
        for block in net.choice_blocks().values():
            block.alpha.normal_()
    alphas = [b.alpha.detach().clone() for b in net.choice_blocks().values()]
    net.set_mode("sample")
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for path in (net.largest_architecture(), net.smallest_architecture(),
                 net.random_architecture(torch.Generator().manual_seed(3))):
        with torch.no_grad(), net.on_path(path):
            out = net(x)
            assert torch.equal(out, net(x))  # no sampling inside: the same child every call
        assert torch.allclose(out, derive(net, path).eval()(x), atol=1e-6)
    assert all(torch.equal(b.alpha, a) for b, a in zip(net.choice_blocks().values(), alphas))
    assert {b.mode for b in net.choice_blocks().values()} == {"sample"}
    assert all(b.active is None for b in net.choice_blocks().values())
    with pytest.raises(ConfigError, match="missing"):
        with net.on_path({"stages.0.0": "mb_k3_e3"}):
            pass
    with pytest.raises(ConfigError, match="not a candidate"):
        with net.on_path({**net.largest_architecture(), "stages.0.0": "skip"}):
            pass


def test_smallest_architecture_skips_where_it_can_and_else_takes_the_fewest_weights():
    net = Supernet("tiny_28")
    smallest = net.smallest_architecture()
    for name, block in net.choice_blocks().items():
        expected = "skip" if "skip" in block.names else "mb_k3_e3"
        assert smallest[name] == expected
