"""The joint compression run end to end on tiny generated data."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import pluto
from pluto.engine.checkpoint import load_checkpoint
from pluto.errors import InfeasibleConstraintError
from pluto.train import compose, run

FAST = ["recipe=smoke_compress", "logger=none", "trainer.threads=1", "hw.table=null", "compress.quantize=false",
        "compress.distill=false"]


def test_joint_prune_run_meets_macs_target_and_shrinks_model(tmp_path):
    metrics = run(compose([*FAST, "constraints.macs=8e6"]), run_dir=tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    (verdict,) = report["constraints"]
    assert verdict["holds"] is True and verdict["measured"] <= 8e6
    assert verdict["uncompressed"] > 2e7  # the dense small_cnn costs ~21.9 M MACs: the target forced real pruning
    assert metrics["params"] < 0.7 * 140_458
    assert (tmp_path / "layers.csv").exists() and (tmp_path / "layers.png").stat().st_size > 1000
    assert (tmp_path / "model_fp32.onnx").exists()
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*logged)
    assert {"lagrangian/lambda/macs", "lagrangian/cost/macs", "lagrangian/violation/macs"} <= keys
    assert any(k.startswith("widths/") for k in keys)


def test_joint_nas_run_derives_architecture_within_budget(tmp_path):
    metrics = run(compose([*FAST, "model=supernet_mbconv", "model.space=tiny_28", "compress.prune=false",
                           "compress.distill=false", "constraints.macs=8e5"]), run_dir=tmp_path)
    decisions = json.loads((tmp_path / "decisions.json").read_text())
    assert set(decisions["architecture"]) == {"stages.0.0", "stages.0.1", "stages.1.0", "stages.1.1"}
    assert metrics["macs"] <= 8e5


def test_infeasible_target_is_rejected_before_training(tmp_path):
    with pytest.raises(InfeasibleConstraintError, match="raise the target to at least"):
        run(compose([*FAST, "constraints.macs=100"]), run_dir=tmp_path)
    assert not (tmp_path / "last.pt").exists()


def test_python_api_compresses_a_module(tmp_path):
    model = pluto.create_model("small_cnn", width=0.5)
    result = pluto.compress(model, None, {"macs": 3e6}, data="synthetic", teacher=None, run_dir=tmp_path,
                            epochs={"warmup": 1, "search": 1, "finetune": 1}, quantize=False,
                            overrides=["trainer=quick", "trainer.batch_size=64", "logger=none", "trainer.threads=1"])
    assert result.report["constraints"][0]["holds"] is True
    with torch.no_grad():
        assert result.model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in model.parameters())


def test_joint_run_resumes_after_kill_mid_search(tmp_path):
    args = [*FAST, "constraints.macs=8e6", "compress.distill=false", "data.num_samples=1024",
            "compress.epochs.search=3", "trainer.checkpoint_every=3"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "pluto.train", *args, f"hydra.run.dir={killed}"],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if (killed / "last.pt").exists():
            try:
                if load_checkpoint(killed / "last.pt")["state"]["phase"] == "search":
                    break
            except Exception:
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "report.json").exists(), "run finished before the kill"
    assert load_checkpoint(killed / "last.pt")["state"]["phase"] == "search"

    resumed = run(compose([*args, "trainer.resume=true"]), run_dir=killed)
    straight = run(compose(args), run_dir=tmp_path / "straight")
    assert resumed["macs"] == straight["macs"]
    assert resumed["accuracy"] == pytest.approx(straight["accuracy"])


def test_latency_target_on_shipped_cpu_table_is_measured_here(tmp_path, repo_root):
    """The report measures the exported int8 model with the table's runtime when this machine is its device."""
    table = os.path.join(repo_root, "latency_tables", "cpu_ort")
    metrics = run(compose(["recipe=smoke_compress", "logger=none", "trainer.threads=1", f"hw.table={table}",
                           "compress.distill=false", "constraints.macs=null", "constraints.latency_ms=0.4",
                           "compress.epochs.search=1"]), run_dir=tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    (verdict,) = report["constraints"]
    if report["measured_on"] is not None:  # a CPU table: measured here, and the landing aimed at the measured cost
        assert verdict["basis"] == "measured" and verdict["measured"] > 0
        assert metrics["measured_latency_ms"] == pytest.approx(verdict["measured"])
        assert report["decisions"]["landing"]["measurements"]
    else:
        assert verdict["predicted"] <= 0.4
    assert (tmp_path / "model_int8.onnx").exists()


def test_energy_constraint_without_energy_table_fails_clearly(tmp_path, repo_root):
    from pluto.errors import TableError

    table = os.path.join(repo_root, "latency_tables", "cpu_ort")
    with pytest.raises(TableError, match="energy_mj"):
        run(compose([*FAST, f"hw.table={table}", "constraints.macs=null", "constraints.energy_mj=1.0"]),
            run_dir=tmp_path)
