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
