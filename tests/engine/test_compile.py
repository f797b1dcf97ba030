"""``trainer.compile``: the joint search step's forward (student with gates and bit mixtures, teacher, KD loss,
expected table cost) is one dynamo graph with no break, gives what eager gives, and sees decisions that change
between calls (a hardened bit-width recompiles instead of running stale code)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pluto.engine.compile import compile_fn
from pluto.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
TABLE = REPO / "latency_tables" / "cpu_ort_xeon_amx"


@pytest.fixture
def joint(tmp_path):
    if not (TABLE / "metadata.json").exists():
        pytest.skip("table cpu_ort_xeon_amx not shipped here")
    from pluto.data import DataSpec
    from pluto.engine.run import RunContext
    from pluto.models import create_model
    from pluto.optimizer.constraints import Constraint
    from pluto.optimizer.pipeline import Compression
    from pluto.train import compose

    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    cfg = compose(["data=synthetic", "data.in_channels=1", "data.input_size=28", "logger=none", f"hw.table={TABLE}",
                   "hw.measure=off", "compress.bits=[4,8]", "constraints=none"])
    comp = Compression(create_model("small_cnn", 10, 1, 28), torch.utils.data.TensorDataset(x, y), None,
                       DataSpec(10, 1, 28), cfg, RunContext(tmp_path, cfg, tensorboard=False), torch.device("cpu"))
    comp.prepare()
    comp.constraints = [Constraint("latency_ms", "latency_ms",
                                   0.5 * float(comp.cost_model.expected("latency_ms").detach()))]
    comp.teacher.spec = "self"
    comp.teacher.build(comp.model)
    comp.attach_decisions()
    comp.search_step(x, y)  # quantizers initialize from the first batch (eager), as in a run
    comp.decisions.model.eval()  # BN on running statistics: eager and compiled calls see the same numbers
    return comp, x, y


def _close(a, b):
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (a, b)


def test_search_forward_is_one_graph_without_breaks(joint):
    comp, x, y = joint
    from pluto.decisions.bits.quantizer import refresh_host_mirrors

    refresh_host_mirrors(comp.decisions.model)
    explained = torch._dynamo.explain(comp.search_forward)(x, y)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_compiled_forward_matches_eager_and_sees_hardened_bits(joint):
    comp, x, y = joint
    from pluto.decisions.bits.choice import BitWidthChoice

    compiled = compile_fn(comp.search_forward, comp.decisions.model, "default", backend="aot_eager")
    for _ in range(2):  # the second call replays the cached graph
        task, _, cost = compiled(x, y)
        ref_task, _, ref_cost = comp.search_forward(x, y)
        _close(task, ref_task)
        _close(cost["latency_ms"], ref_cost["latency_ms"])
    task.backward()  # the compiled forward is differentiable (AOTAutograd)
    assert any(p.grad is not None for p in comp.decisions.parameters())

    choice = next(m for m in comp.decisions.model.modules() if isinstance(m, BitWidthChoice) and len(m.candidates) > 1)
    before = compiled(x, y)[2]["latency_ms"].detach().clone()
    choice.harden(min(choice.candidates))  # an in-place buffer write between calls: the host mirror changes
    task, _, cost = compiled(x, y)
    ref_task, _, ref_cost = comp.search_forward(x, y)
    _close(task, ref_task)
    _close(cost["latency_ms"], ref_cost["latency_ms"])
    assert not torch.allclose(cost["latency_ms"], before), "hardening did not reach the compiled forward"


def test_compile_modes_are_checked():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="trainer.compile"):
        compile_fn(model, model, "fast")
    eager = compile_fn(model, model, "none")
    assert eager.model is model and torch.equal(eager(torch.ones(1, 2)), model(torch.ones(1, 2)))


@pytest.mark.slow
def test_a_whole_joint_run_with_trainer_compile(tmp_path):
    """End to end on a CPU (~80 s of inductor compiles): gates + QAT + KD with ``trainer.compile=default`` — the
    compiled search forward and the compiled primal-dual step — meets its MACs target, logs the multipliers, exports."""
    import json

    from pluto.train import compose, run

    run(compose(["recipe=smoke_compress", "logger=none", "trainer.threads=2", "hw.table=null", "constraints.macs=8e6",
                 "trainer.compile=default"]), run_dir=tmp_path)
    (verdict,) = json.loads((tmp_path / "report.json").read_text())["constraints"]
    assert verdict["holds"] is True and verdict["measured"] <= 8e6
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lambdas = [row["lagrangian/lambda/macs"] for row in logged if "lagrangian/lambda/macs" in row]
    assert lambdas and max(lambdas) > 0  # the dual step ran (compiled) and priced the violation
    assert (tmp_path / "model_int8.onnx").exists() or (tmp_path / "model_fp32.onnx").exists()
