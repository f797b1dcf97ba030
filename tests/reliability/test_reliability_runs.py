"""Run folders: one run at a time (flock), no re-use without resume, resume only of the same config;
checkpoint errors name the problem and the least destructive fix."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from pluto.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pluto.engine.run import RunContext, holds_run
from pluto.errors import ConfigError, PlutoError
from pluto.train import compose, run

SMOKE = ["recipe=smoke", "logger=none", "trainer.threads=1", "trainer.epochs=1", "data.num_samples=128"]
FAST_COMPRESS = ["recipe=smoke_compress", "logger=none", "trainer.threads=1", "hw.table=null",
                 "compress.quantize=false", "compress.distill=false", "data.num_samples=256", "constraints.macs=8e6"]


def _cfg(*overrides):
    return compose([*SMOKE, *overrides])


def test_second_run_into_a_busy_folder_is_refused(tmp_path):
    first = RunContext(tmp_path, _cfg(), tensorboard=False)
    try:
        with pytest.raises(ConfigError, match="in use by a running job"):
            RunContext(tmp_path, _cfg(), tensorboard=False)
    finally:
        first.close()
    RunContext(tmp_path, _cfg(), tensorboard=False).close()  # the lock is released on close


def test_busy_folder_is_refused_across_processes(tmp_path):
    import subprocess
    import sys
    import time

    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
        "f.write('pid test'); f.flush(); print('locked', flush=True); time.sleep(30)"), str(tmp_path / ".lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match="in use"):
            run(_cfg(), run_dir=tmp_path)
        assert not (tmp_path / "config.yaml").exists() and not (tmp_path / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    run(_cfg(), run_dir=tmp_path)  # the OS released the dead holder's lock


def test_resume_with_changed_config_is_refused_and_keeps_records(tmp_path):
    run(_cfg(), run_dir=tmp_path)
    config_before = (tmp_path / "config.yaml").read_text()
    log_before = (tmp_path / "metrics.jsonl").read_bytes()
    with pytest.raises(ConfigError, match=r"trainer.lr: 0.05 -> 0.1.*resume_allow_changes") as info:
        run(_cfg("trainer.resume=true", "trainer.lr=0.1"), run_dir=tmp_path)
    assert "trainer.lr" in str(info.value)
    assert (tmp_path / "config.yaml").read_text() == config_before
    assert (tmp_path / "metrics.jsonl").read_bytes() == log_before
    # where a run executes is not what it computes: device/threads/logging may change on resume
    run(_cfg("trainer.resume=true", "trainer.threads=2", "trainer.log_every=7"), run_dir=tmp_path)


def test_allowed_change_on_resume_is_recorded(tmp_path):
    run(_cfg(), run_dir=tmp_path)
    run(_cfg("trainer.resume=true", "trainer.epochs=2", "trainer.resume_allow_changes=[trainer.epochs]"),
        run_dir=tmp_path)
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["history"][-1]["changed"] == {"trainer.epochs": [1, 2]}
    assert OmegaConf.load(tmp_path / "config.yaml").trainer.epochs == 2
    with pytest.raises(ConfigError, match="not a config key"):
        compose([*SMOKE, "trainer.resume_allow_changes=[trainer.epochz]"])


def test_folder_with_results_is_not_reused_without_resume(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a run"):
        run(_cfg(), run_dir=tmp_path)
    assert not (tmp_path / "config.yaml").exists()


def test_failed_start_leaves_the_folder_reusable(tmp_path):
    with pytest.raises(PlutoError):
        run(compose([*SMOKE, "compress=joint", "constraints.macs=100", "compress.quantize=false",
                     "compress.distill=false", "hw.table=null"]), run_dir=tmp_path)  # infeasible: refused early
    assert not holds_run(tmp_path)
    run(_cfg(), run_dir=tmp_path)


def test_empty_last_checkpoint_names_the_problem(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty \(0 bytes\).*No intact earlier checkpoint"):
        load_checkpoint(tmp_path / "last.pt")
    (tmp_path / "x.pt").write_bytes(b"\x80")
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(tmp_path / "x.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint dictionary"):
        load_checkpoint(tmp_path / "list.pt")


def test_corrupt_last_checkpoint_points_at_the_latest_phase_file(tmp_path):
    save_checkpoint(tmp_path / "warmup.pt", {"model": {"w": torch.ones(1)}, "state": {"phase": "warmup"}})
    save_checkpoint(tmp_path / "search.pt", {"model": {"w": torch.ones(1)}, "state": {"phase": "search"}})
    (tmp_path / "finetune.pt").write_bytes(b"")  # torn: skipped
    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"cp .*search\.pt .*last\.pt.*trainer.resume=true"):
        load_checkpoint(tmp_path / "last.pt")


def test_resume_from_a_torn_run_follows_the_advice(tmp_path):
    """A compression run whose last.pt is torn: the error says what to do, and doing it finishes the run."""
    run(compose(FAST_COMPRESS), run_dir=tmp_path)
    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="finetune.pt") as info:
        run(compose([*FAST_COMPRESS, "trainer.resume=true"]), run_dir=tmp_path)
    assert "cp " in str(info.value)
    report_before = (tmp_path / "report.json").read_text()
    shutil.copy(tmp_path / "finetune.pt", tmp_path / "last.pt")  # the advice
    metrics = run(compose([*FAST_COMPRESS, "trainer.resume=true"]), run_dir=tmp_path)
    assert metrics["macs"] <= 8e6
    assert json.loads(report_before)["constraints"][0]["measured"] == pytest.approx(metrics["macs"])
