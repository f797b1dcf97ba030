import pytest

from pluto.errors import ConfigError, InfeasibleConstraintError
from pluto.optimizer.constraints import Constraint, check_feasible, constraints_from_config


def test_constraint_units_and_violation():
    c = Constraint("latency", "latency_ms", 0.5)
    assert c.unit == "ms" and str(c) == "latency_ms <= 0.5 ms"
    assert c.violation(0.6) == pytest.approx(0.2) and c.violation(0.25) == pytest.approx(-0.5)
    assert c.satisfied(0.5) and not c.satisfied(0.51) and c.satisfied(0.51, tolerance=0.05)
    assert Constraint("e", "energy_mj", 1.0).unit == "mJ" and Constraint("s", "size_bytes", 1).unit == "bytes"


@pytest.mark.parametrize("args", [("x", "flops", 1.0), ("x", "latency_ms", 0.0), ("x", "latency_ms", -1.0),
                                  ("x", "latency_ms", float("inf")), ("x", "latency_ms", 1.0, "s")])
def test_bad_constraints_raise(args):
    with pytest.raises(ConfigError):
        Constraint(*args)


def test_constraints_from_config_skips_unset():
    cons = constraints_from_config({"latency_ms": 0.5, "energy_mj": None, "size_bytes": "2e6",
                                    "macs": {"target": None}})
    assert [(c.name, c.metric, c.target) for c in cons] == [("latency_ms", "latency_ms", 0.5),
                                                            ("size_bytes", "size_bytes", 2e6)]
    assert constraints_from_config(None) == []
    with pytest.raises(ConfigError, match="not a number"):
        constraints_from_config({"latency_ms": "fast"})


def test_check_feasible_names_minimum_and_fix():
    cons = [Constraint("latency_ms", "latency_ms", 0.1), Constraint("macs", "macs", 5e6)]
    check_feasible(cons, {"latency_ms": 0.05, "macs": 1e6})
    with pytest.raises(InfeasibleConstraintError, match=r"0\.2 ms.*raise the target"):
        check_feasible(cons, {"latency_ms": 0.2, "macs": 1e6})


def test_target_equal_to_the_minimum_is_feasible_despite_float_rounding():
    target = 14400672.0  # a MACs target copied from a model of the space (the MACs ablation does this)
    check_feasible([Constraint("macs", "macs", target)], {"macs": target * (1 + 1e-9)})
    with pytest.raises(InfeasibleConstraintError):
        check_feasible([Constraint("macs", "macs", target)], {"macs": target * 1.001})


def test_a_macs_target_at_the_floor_model_of_the_space_is_feasible(tmp_path):
    """The pipeline's minimum of the space is the model with every gated group at the table's channel floor and
    every ungated count (the classifier's 10 outputs) at its full width: a MACs target copied from that model (as
    the sweep's MACs-constrained ablation does from a latency-joint result at the floor) is feasible, and the
    minimum equals its MACs exactly (a classifier counted with 11 outputs once made it 16 MACs too high)."""
    from pathlib import Path

    import torch

    from pluto.cost.ops import extract_ops, total_macs
    from pluto.data import DataSpec
    from pluto.decisions.channels import DependencyGraph, prune_by_importance
    from pluto.engine.run import RunContext
    from pluto.models import create_model
    from pluto.optimizer.pipeline import Compression
    from pluto.train import compose

    table = Path(__file__).resolve().parents[2] / "latency_tables" / "cpu_ort_xeon_amx"
    if not (table / "metadata.json").exists():
        pytest.skip("table cpu_ort_xeon_amx not shipped here")
    example = torch.zeros(1, 1, 28, 28)
    model = create_model("resnet20", 10, 1, 28).eval()
    floor_model = prune_by_importance(model, DependencyGraph.build(model, example), ratio=0.95, round_to=16)
    floor_macs = total_macs(extract_ops(floor_model, (1, 1, 28, 28)))
    cfg = compose(["data=synthetic", "data.in_channels=1", "data.input_size=28", "logger=none", f"hw.table={table}",
                   "hw.measure=off", "compress=joint", "compress.bits=[8,32]", "constraints=none",
                   f"constraints.macs={floor_macs}"])
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    comp = Compression(model, torch.utils.data.TensorDataset(x, y), None, DataSpec(10, 1, 28), cfg,
                       RunContext(tmp_path, cfg, tensorboard=False), torch.device("cpu"))
    comp.prepare()  # raised InfeasibleConstraintError before
    assert comp.minimum["macs"] == pytest.approx(floor_macs, rel=1e-12)
