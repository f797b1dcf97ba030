import io
import math

import pytest
import torch

from pluto.errors import ConfigError
from pluto.optimizer.constraints import Constraint
from pluto.optimizer.lagrangian import LagrangeMultiplier, LagrangianConfig, LagrangianObjective


def _solve(objective, params, task, costs_of, steps, lr=0.05):
    opt = torch.optim.SGD(params, lr=lr)
    for _ in range(steps):
        costs = costs_of()
        loss, logs = objective(task(), costs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        objective.dual_step(costs_of())
    return logs


@pytest.mark.parametrize("rho", [0.0, 1.0])
def test_one_constraint_converges_to_kkt_point(rho):
    # min (x - 3)^2  s.t.  x <= 1   ->   x* = 1, lambda* = 4 (normalized violation g = x / 1 - 1)
    x = torch.zeros((), requires_grad=True)
    obj = LagrangianObjective([Constraint("x", "latency_ms", 1.0)], LagrangianConfig(eta=0.1, rho=rho))
    logs = _solve(obj, [x], lambda: (x - 3) ** 2, lambda: {"latency_ms": x}, 3000)
    assert x.item() == pytest.approx(1.0, abs=1e-3)
    assert obj.lambdas()["x"] == pytest.approx(4.0, abs=1e-2)
    assert logs["violation/x"] == pytest.approx(0.0, abs=1e-3)
    assert logs["cost/x"] == pytest.approx(1.0, abs=1e-3) and logs["lambda/x"] == pytest.approx(4.0, abs=1e-2)


def test_target_scale_changes_lambda_by_the_normalization():
    # same problem with the constraint written as x <= 1 in a unit 1000x smaller: lambda* stays 4
    x = torch.zeros((), requires_grad=True)
    obj = LagrangianObjective([Constraint("x", "macs", 1000.0)], LagrangianConfig(eta=0.1))
    _solve(obj, [x], lambda: (x - 3) ** 2, lambda: {"macs": 1000 * x}, 3000)
    assert x.item() == pytest.approx(1.0, abs=1e-3) and obj.lambdas()["x"] == pytest.approx(4.0, abs=1e-2)


def test_two_active_constraints_and_one_slack():
    # min (x-2)^2 + (y-2)^2  s.t.  x + y <= 2,  x <= 0.5,  y <= 10
    # KKT: x = 0.5, y = 1.5; with g1 = (x+y)/2 - 1, g2 = x/0.5 - 1:  lambda1 = 2, lambda2 = 1, lambda3 = 0
    xy = torch.zeros(2, requires_grad=True)
    cons = [Constraint("sum", "macs", 2.0), Constraint("x", "latency_ms", 0.5), Constraint("y", "size_bytes", 10.0)]
    obj = LagrangianObjective(cons, {"eta": 0.1, "rho": 0.5})
    _solve(obj, [xy], lambda: ((xy - 2) ** 2).sum(), lambda: {"sum": xy.sum(), "x": xy[0], "y": xy[1]}, 6000)
    assert xy.tolist() == pytest.approx([0.5, 1.5], abs=2e-3)
    lam = obj.lambdas()
    assert lam["sum"] == pytest.approx(2.0, abs=2e-2) and lam["x"] == pytest.approx(1.0, abs=2e-2)
    assert lam["y"] == 0.0  # projected: never negative


def test_multiplier_update_rule_and_projection():
    m = LagrangeMultiplier(Constraint("lat", "latency_ms", 2.0), eta=0.5)
    assert m.update(0.2) == pytest.approx(0.1)
    assert m.update(0.4) == pytest.approx(0.3)
    assert m.update(-10.0) == 0.0
    capped = LagrangeMultiplier(Constraint("lat", "latency_ms", 2.0), eta=1.0, max_value=0.5)
    assert capped.update(3.0) == 0.5
    with pytest.raises(ConfigError):
        m.update(math.nan)


def test_primal_loss_terms_and_gradients():
    c = Constraint("lat", "latency_ms", 2.0)
    obj = LagrangianObjective([c], LagrangianConfig(eta=1.0, rho=4.0, lambda_init=0.5))
    cost = torch.tensor(3.0, requires_grad=True)
    task = torch.tensor(1.0)
    loss, logs = obj(task, {"lat": cost})
    g = 3.0 / 2.0 - 1.0
    assert loss.item() == pytest.approx(1.0 + 0.5 * g + 0.5 * 4.0 * g * g)
    loss.backward()
    assert cost.grad.item() == pytest.approx((0.5 + 4.0 * g) / 2.0)  # d/dcost of lambda*g + rho/2 g^2
    assert logs["loss/constraint"] == pytest.approx(0.5 * g + 2.0 * g * g) and logs["loss/task"] == 1.0


def test_warmup_and_update_every():
    obj = LagrangianObjective([Constraint("lat", "latency_ms", 1.0)], LagrangianConfig(eta=1.0, warmup=2,
                                                                                       update_every=3))
    costs = {"latency_ms": torch.tensor(2.0)}
    loss, _ = obj(torch.tensor(0.0), costs)
    assert loss.item() == 0.0 and not obj.active
    history = [obj.dual_step(costs)["lat"] for _ in range(8)]
    # steps 1..2 warm-up; then updates at steps 5 and 8 (every 3rd step after warm-up)
    assert history == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0]
    assert obj.active and obj(torch.tensor(0.0), costs)[0].item() == pytest.approx(2.0)


def test_state_dict_round_trip_through_torch_save_weights_only():
    cons = [Constraint("lat", "latency_ms", 1.0), Constraint("mb", "size_bytes", 1e6)]
    obj = LagrangianObjective(cons, LagrangianConfig(eta=0.3))
    for _ in range(4):
        obj.dual_step({"lat": 1.5, "mb": 2e6})
    buf = io.BytesIO()
    torch.save(obj.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = LagrangianObjective(cons, LagrangianConfig(eta=0.3))
    fresh.load_state_dict(state)
    assert fresh.lambdas() == obj.lambdas() and fresh.step == obj.step == 4
    # resumed and uninterrupted runs continue identically
    assert fresh.dual_step({"lat": 1.2, "mb": 0.5e6}) == obj.dual_step({"lat": 1.2, "mb": 0.5e6})
    with pytest.raises(ConfigError):
        LagrangianObjective([cons[0]]).load_state_dict(state)


def test_missing_cost_and_bad_config_raise_config_error():
    obj = LagrangianObjective([Constraint("lat", "latency_ms", 1.0)])
    with pytest.raises(ConfigError, match="latency_ms"):
        obj(torch.tensor(0.0), {"energy_mj": 1.0})
    for bad in ({"eta": 0.0}, {"rho": -1.0}, {"update_every": 0}, {"warmup": -1}):
        with pytest.raises(ConfigError):
            LagrangianConfig(**bad)


def test_proportional_gain_keeps_the_optimum_and_prices_slack_immediately():
    x = torch.zeros((), requires_grad=True)
    obj = LagrangianObjective([Constraint("x", "latency_ms", 1.0)], LagrangianConfig(eta=0.1, kp=2.0))
    _solve(obj, [x], lambda: (x - 3) ** 2, lambda: {"latency_ms": x}, 3000)
    assert x.item() == pytest.approx(1.0, abs=1e-3) and obj.lambdas()["x"] == pytest.approx(4.0, abs=1e-2)
    obj.multipliers["x"].value = 1.0
    _, logs = obj(torch.tensor(0.0), {"latency_ms": 0.25})  # 75 % under target: price drops at once
    assert logs["lambda/x"] == 1.0 and logs["price/x"] == 0.0
    _, logs = obj(torch.tensor(0.0), {"latency_ms": 1.5})
    assert logs["price/x"] == pytest.approx(1.0 + 2.0 * 0.5)
    with pytest.raises(ConfigError):
        LagrangianConfig(kp=-1.0)


def test_device_multipliers_follow_the_host_trajectory_and_never_read_the_device():
    """Tensor costs (a training step's, on its device) move the multipliers there in float64: the same numbers as
    the float path, no host read until asked; a non-finite violation raises at that read."""
    from pluto.engine.probe import StepProbe

    cons = [Constraint("lat", "latency_ms", 2.0), Constraint("mb", "size_bytes", 1e6)]
    config = LagrangianConfig(eta=0.3, kp=1.5, lambda_max=0.7)
    host, device = LagrangianObjective(cons, config), LagrangianObjective(cons, config)
    costs = [(2.9, 1.3e6), (2.2, 0.4e6), (1.1, 2.5e6), (3.7, 0.9e6), (1.9, 1.01e6)]
    with StepProbe(strict=True) as probe:
        for lat, mb in costs:
            task = torch.tensor(1.0)
            device(task, {"lat": torch.tensor(lat, dtype=torch.float64), "mb": torch.tensor(mb)})
            device.dual_step({"lat": torch.tensor(lat, dtype=torch.float64), "mb": torch.tensor(mb)})
    assert probe.report.n_syncs == 0
    for lat, mb in costs:
        host.dual_step({"lat": lat, "mb": float(torch.tensor(mb))})
    assert device.lambdas() == host.lambdas()
    assert device.state_dict() == host.state_dict()  # plain Python, as checkpoints need
    device.dual_step({"lat": torch.tensor(math.nan), "mb": torch.tensor(1.0)})
    with pytest.raises(ConfigError):
        device.lambdas()


def test_compiled_primal_dual_matches_call_then_dual_step():
    """``primal_dual(compiled=True)`` (one compiled function: primal loss, logs, dual step) gives the losses,
    gradients, logs and multiplier trajectory of ``__call__`` + ``dual_step``, through warm-up, ``update_every``,
    the proportional and quadratic terms, the lambda cap, and a non-finite cost (which raises on the next read)."""
    cfg = LagrangianConfig(eta=0.8, rho=0.5, kp=0.2, warmup=2, update_every=2, lambda_max=0.9)
    cons = [Constraint("lat", "latency_ms", 2.0), Constraint("size", "size_bytes", 10.0)]
    eager, fused = LagrangianObjective(cons, cfg), LagrangianObjective(cons, cfg)
    torch.manual_seed(0)
    for step in range(9):
        w = torch.randn(2, dtype=torch.float64) * 0.5 + torch.tensor([3.0, 8.0], dtype=torch.float64)
        results = []
        for obj, compiled in ((eager, False), (fused, True)):
            x = w.clone().requires_grad_()
            task = (x.float() ** 2).sum() * 0.01
            loss, logs = obj.primal_dual(task, {"latency_ms": x[0], "size_bytes": x[1]}, compiled=compiled,
                                         backend="aot_eager")
            grad, = torch.autograd.grad(loss, x)
            results.append((loss.detach(), grad, {k: float(v) for k, v in logs.items()}, obj.lambdas()))
        (l_e, g_e, logs_e, lam_e), (l_f, g_f, logs_f, lam_f) = results
        torch.testing.assert_close(l_f, l_e)
        torch.testing.assert_close(g_f, g_e)
        assert logs_f == pytest.approx(logs_e) and lam_f == pytest.approx(lam_e), step
    assert eager.step == fused.step == 9 and max(fused.lambdas().values()) == pytest.approx(0.9)
    fused.primal_dual(torch.zeros(()), {"latency_ms": torch.tensor(math.nan, dtype=torch.float64),
                                        "size_bytes": torch.tensor(1.0, dtype=torch.float64)},
                      compiled=True, backend="aot_eager")  # step 10: an update step
    with pytest.raises(ConfigError, match="not finite"):
        fused.lambdas()
