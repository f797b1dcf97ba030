import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from pluto import cli
from pluto.errors import ConfigError
from pluto import sweep as commands
from pluto.sweep import MetricBound, ParamSpec, SweepSpec, best_feasible_trial, reclaim_stale, run_sweep

REPO = Path(__file__).resolve().parents[2]


class FakeRun:
    """Stands in for pluto.train.run_with_overrides: accuracy peaks at lr=0.01, latency grows with width."""

    def __init__(self):
        self.calls = []

    def __call__(self, overrides, run_dir):
        self.calls.append((list(overrides), run_dir))
        values = dict(o.split("=", 1) for o in overrides)
        lr, width = float(values.get("trainer.lr", 0.01)), float(values.get("model.width", 1.0))
        accuracy = 90.0 - 10 * (math.log10(lr) + 2) ** 2 + 5 * width
        return {"accuracy": accuracy, "latency_ms": 2.0 * width, "note": "not a number"}


def test_param_spec_parsing():
    assert ParamSpec.parse("trainer.lr=1e-4:1e-1:log") == ParamSpec("trainer.lr", 1e-4, 1e-1, log=True)
    assert ParamSpec.parse("trainer.epochs=2:8") == ParamSpec("trainer.epochs", 2, 8, integer=True)
    assert ParamSpec.parse("x=0.1:0.9").integer is False
    assert ParamSpec.parse("model.width=0.5,1,true,adam").choices == (0.5, 1, True, "adam")
    for bad in ("lr", "lr=", "lr=0.1", "lr=1:0", "lr=0:1:log", "lr=a:b", "lr=1:2:3"):
        with pytest.raises(ConfigError):
            ParamSpec.parse(bad)


def test_metric_bound_parsing_and_excess():
    b = MetricBound.parse("latency_ms<=0.5")
    assert (b.key, b.op, b.value) == ("latency_ms", "<=", 0.5)
    assert b.excess({"latency_ms": 0.7}) == pytest.approx(0.2)
    assert MetricBound.parse("accuracy >= 80").excess({"accuracy": 85.0}) == pytest.approx(-5.0)
    with pytest.raises(ConfigError):
        MetricBound.parse("latency_ms<0.5")
    with pytest.raises(ConfigError, match="returned only"):
        b.excess({"accuracy": 1.0})


def test_sweep_runs_and_resumes_with_same_study_name(tmp_path):
    fake = FakeRun()
    spec = SweepSpec("smoke", [ParamSpec.parse("trainer.lr=1e-4:1:log")], trials=3, study_name="s", out=tmp_path,
                     overrides=["logger=none"])
    study = run_sweep(spec, run_fn=fake)
    assert len(fake.calls) == 3 and len(study.trials) == 3
    overrides, run_dir = fake.calls[0]
    assert overrides[:2] == ["recipe=smoke", "logger=none"] and overrides[2].startswith("trainer.lr=")
    assert run_dir == tmp_path / "s" / "trial_0000"
    assert (tmp_path / "optuna.db").exists() and (tmp_path / "s_trials.csv").exists()
    spec.trials = 5
    study = run_sweep(spec, run_fn=fake)  # a new process would do the same: the study is loaded from sqlite
    assert len(fake.calls) == 5 and len(study.trials) == 5
    assert study.trials[4].user_attrs["metric/latency_ms"] == pytest.approx(2.0)
    run_sweep(spec, run_fn=fake)  # already complete: nothing runs
    assert len(fake.calls) == 5


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_killed_trial_is_retried_on_resume(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="k", storage=storage, direction="maximize")
    study.enqueue_trial({"trainer.lr": 0.001})
    trial = study.ask()  # a trial whose worker was killed: RUNNING forever
    trial.suggest_float("trainer.lr", 1e-4, 1.0, log=True)
    study._storage.set_trial_system_attr(trial._trial_id, "pluto:worker", f"{socket.gethostname()}:{_dead_pid()}")
    alive = study.ask()  # a trial another live worker (this process's parent, say) is running: left alone
    study._storage.set_trial_system_attr(alive._trial_id, "pluto:worker", f"{socket.gethostname()}:{os.getppid()}")
    fake = FakeRun()
    spec = SweepSpec(None, [ParamSpec.parse("trainer.lr=1e-4:1:log")], trials=3, study_name="k", out=tmp_path)
    study = run_sweep(spec, run_fn=fake)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 1 and states.count(optuna.trial.TrialState.COMPLETE) == 2
    assert states[1] == optuna.trial.TrialState.RUNNING  # completed + running = 3 trials: this worker stops
    assert fake.calls[0][0] == ["trainer.lr=0.001"]  # the killed trial's parameters ran first
    assert study.trials[2].user_attrs["retry_of"] == 0


def test_remote_trial_is_reclaimed_after_missed_heartbeats(tmp_path):
    study = optuna.create_study(study_name="h", storage=commands.open_storage(f"journal:{tmp_path / 'j.log'}", tmp_path))
    fresh, old = study.ask(), study.ask()
    now = time.time()
    for t, beat in ((fresh, now), (old, now - 10)):
        study._storage.set_trial_system_attr(t._trial_id, "pluto:worker", "other-host:123")
        study._storage.set_trial_system_attr(t._trial_id, "pluto:heartbeat", beat)
        study._storage.set_trial_system_attr(t._trial_id, "pluto:heartbeat_interval", 2.0)
    assert reclaim_stale(study, heartbeat=30.0) == 1  # the trial's own interval (2 s) counts: 10 s = 5 missed
    assert reclaim_stale(study, heartbeat=30.0) == 0  # re-queued once, however often it is noticed
    states = [t.state for t in study.get_trials()]
    assert states == [optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]


def test_two_workers_share_one_journal_study(tmp_path):
    """Two `pluto sweep` processes on one journal file: 4 completed trials, each run once, by both workers."""
    journal = tmp_path / "study.log"
    argv = [sys.executable, "-m", "pluto.cli", "sweep", "--recipe", "smoke", "--trials", "4", "--study-name", "j",
            "--storage", f"journal:{journal}", "--param", "trainer.lr=1e-3:1e-1:log", "--heartbeat", "2",
            "--override", "logger=none", "--override", "trainer.threads=1", "--override", "trainer.epochs=1",
            "--override", "data.num_samples=128"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([*argv, "--out", str(tmp_path / f"w{i}")], cwd=REPO, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
    logs = [w.communicate(timeout=240)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    study = optuna.load_study(study_name="j", storage=commands.open_storage(f"journal:{journal}", tmp_path))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4 and len(study.trials) == 4  # nothing failed, nothing ran twice
    run_dirs = [t.user_attrs["run_dir"] for t in complete]
    assert len(set(run_dirs)) == 4 and all((Path(d) / "metrics.json").exists() for d in run_dirs)
    assert len({t.params["trainer.lr"] for t in complete}) == 4


def test_constraints_pick_best_feasible_trial(tmp_path):
    fake = FakeRun()
    spec = SweepSpec(None, [ParamSpec.parse("model.width=0.25,0.5,1.0"), ParamSpec.parse("trainer.lr=0.001,0.01")],
                     trials=12, study_name="c", out=tmp_path, constraints=[MetricBound.parse("latency_ms<=1.0")])
    study = run_sweep(spec, run_fn=fake)
    best = best_feasible_trial(study)
    assert best is not None and best.user_attrs["metric/latency_ms"] <= 1.0
    feasible = [t.value for t in study.trials if t.user_attrs["metric/latency_ms"] <= 1.0]
    assert best.value == max(feasible)
    assert any(t.user_attrs["metric/latency_ms"] > 1.0 for t in study.trials) or best.params["model.width"] == 0.5


def test_cli_sweep_end_to_end(tmp_path, monkeypatch, capsys):
    fake = FakeRun()
    monkeypatch.setattr(commands, "load_runner", lambda: fake)
    argv = ["sweep", "--recipe", "smoke", "--param", "trainer.lr=1e-3:1e-1:log", "--trials", "4",
            "--study-name", "cli", "--out", str(tmp_path), "--constraint", "latency_ms<=5"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "4 completed trials" in out and "best trial #" in out and "pluto train recipe=smoke" in out
    assert cli.main([*argv[:-6], "--trials", "6", "--study-name", "cli", "--out", str(tmp_path)]) == 0
    assert len(fake.calls) == 6


def test_cli_reports_bad_input_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(commands, "load_runner", lambda: FakeRun())
    base = ["sweep", "--out", str(tmp_path), "--trials", "1"]
    assert cli.main([*base, "--param", "trainer.lr=1e-3:1e-1:log", "--metric", "top5"]) == 2
    assert "not among the run's results" in capsys.readouterr().err
    assert cli.main(base) == 2
    assert "nothing to search" in capsys.readouterr().err
    assert cli.main([*base, "--param", "lr=fast"]) == 2


@pytest.mark.slow
def test_real_tiny_sweep_with_train_run(tmp_path):
    pytest.importorskip("pluto.train")
    spec = SweepSpec("smoke", [ParamSpec.parse("trainer.lr=0.01,0.1")], trials=2, study_name="real", out=tmp_path,
                     overrides=["logger=none", "trainer.threads=1", "trainer.epochs=1"])
    study = run_sweep(spec)
    assert len(study.trials) == 2 and all(0.0 <= t.value <= 100.0 for t in study.trials)
    assert (tmp_path / "real" / "trial_0000" / "metrics.json").exists()
