import math

import optuna
import pytest

from pluto import cli
from pluto.errors import ConfigError
from pluto.optimizer import commands
from pluto.optimizer.commands import MetricBound, ParamSpec, SweepSpec, best_feasible_trial, run_sweep


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


def test_killed_trial_is_retried_on_resume(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="k", storage=storage, direction="maximize")
    study.enqueue_trial({"trainer.lr": 0.001})
    trial = study.ask()  # a trial that started and was killed: RUNNING forever
    trial.suggest_float("trainer.lr", 1e-4, 1.0, log=True)
    fake = FakeRun()
    spec = SweepSpec(None, [ParamSpec.parse("trainer.lr=1e-4:1:log")], trials=2, study_name="k", out=tmp_path)
    study = run_sweep(spec, run_fn=fake)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 1 and states.count(optuna.trial.TrialState.COMPLETE) == 2
    assert fake.calls[0][0] == ["trainer.lr=0.001"]  # the killed trial's parameters ran first


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
