"""``pluto sweep``: Optuna hyperparameter search over a recipe, in a study that resumes.

Each trial runs ``pluto.train.run_with_overrides(overrides, run_dir)`` with overrides
``["recipe=<recipe>", *--override, "<param>=<value>", ...]`` into ``<out>/<study>/trial_<n>`` and
reads one metric of the returned ``dict[str, float]`` (default ``accuracy``, maximized).
Constraints on returned metrics (``--constraint latency_ms<=0.5``) become Optuna trial
constraints (value - bound, feasible when <= 0), so the TPE sampler prefers
feasible trials and ``best`` is the best *feasible* trial.

Constraints are stored with ``Trial.set_constraint`` (Optuna >= 5; ``constraints_func`` before).
The study lives in ``<out>/optuna.db`` (SQLite) unless ``--storage`` names another Optuna storage:
any SQLAlchemy URL (``postgresql://user@host/db``, ``mysql+pymysql://...``) or ``journal:PATH``
(Optuna's ``JournalFileBackend``: one append-only file on a shared file system, no database
server). Re-running with the same ``--study-name`` continues the study until ``--trials`` trials
have completed.

Several workers, on one machine or many, share one study when they run the same command with
the same ``--storage``: Optuna hands each a different trial (the TPE sampler runs with
``constant_liar`` and a per-worker seed, so concurrent workers do not propose the same point),
and each stops once the completed and running trials reach ``--trials``. A worker records
``pluto:worker`` (host:pid) and a ``pluto:heartbeat`` time on its running trial every
``--heartbeat`` seconds (the journal storage has no heartbeat of Optuna's own); a worker that
starts or finishes a trial marks ``FAIL`` any running trial whose process is gone (same host) or
whose heartbeat is older than 3 intervals, and queues its parameters to run again, exactly once.
Watch the study live with ``optuna-dashboard <storage URL>`` (``pip install 'pluto[dashboard]'``).

Search space: ``--param name=low:high`` (uniform float; ints if both bounds are ints),
``name=low:high:log`` (log scale) or ``name=a,b,c`` (categorical). Names are Hydra keys.
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from pluto.errors import ConfigError

RunFn = Callable[[list[str], Path], dict[str, float]]
_CONSTRAINT = re.compile(r"^\s*([\w./-]+)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class ParamSpec:
    """One searched hyperparameter: a float/int range (optionally log-scaled) or a list of choices."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "ParamSpec":
        name, sep, spec = text.partition("=")
        name, spec = name.strip(), spec.strip()
        if not sep or not name or not spec:
            raise ConfigError(f"cannot read --param {text!r}; write name=low:high[:log] or name=a,b,c")
        if ":" in spec:
            parts = spec.split(":")
            log = len(parts) == 3 and parts[2] == "log"
            if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
                raise ConfigError(f"cannot read range {spec!r} of --param {name}; write low:high or low:high:log")
            try:
                low, high = float(parts[0]), float(parts[1])
            except ValueError:
                raise ConfigError(f"--param {name}: bounds {parts[0]!r}, {parts[1]!r} must be numbers") from None
            if not low < high:
                raise ConfigError(f"--param {name}: need low < high, got {low:g}:{high:g}")
            if log and low <= 0:
                raise ConfigError(f"--param {name}: a log range needs low > 0, got {low:g}")
            integer = all(re.fullmatch(r"[-+]?\d+", p) for p in parts[:2])
            return cls(name, low, high, log, integer)
        choices = tuple(_scalar(v) for v in spec.split(","))
        if len(choices) < 2:
            raise ConfigError(f"--param {name} has one value {spec!r}; pass it as --override {name}={spec} or give "
                              "a range low:high or choices a,b,c")
        return cls(name, choices=choices)

    def suggest(self, trial: Any) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


def _scalar(text: str) -> Any:
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class MetricBound:
    """A bound on a returned metric, ``key <= value`` or ``key >= value``."""

    key: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> "MetricBound":
        match = _CONSTRAINT.match(text)
        if not match:
            raise ConfigError(f"cannot read --constraint {text!r}; write e.g. latency_ms<=0.5 or accuracy>=0.8")
        return cls(match.group(1), match.group(2), float(match.group(3)))

    def excess(self, metrics: dict[str, float]) -> float:
        """How far the bound is exceeded (<= 0: satisfied), in the metric's unit."""
        if self.key not in metrics:
            raise ConfigError(f"--constraint on {self.key!r}, but the run returned only {sorted(metrics)}")
        value = float(metrics[self.key])
        return value - self.value if self.op == "<=" else self.value - value


@dataclass
class SweepSpec:
    """Everything one sweep needs (the CLI's arguments as a dataclass, for use from Python)."""

    recipe: str | None
    params: list[ParamSpec]
    trials: int = 20
    study_name: str = "sweep"
    out: Path = Path("outputs/sweeps")
    metric: str = "accuracy"
    direction: str = "maximize"
    constraints: list[MetricBound] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    seed: int = 0
    storage: str | None = None  # None: sqlite in out/optuna.db; else a SQLAlchemy URL or journal:PATH
    heartbeat: float = 30.0  # seconds between a running trial's heartbeats


def load_runner() -> RunFn:
    """``pluto.train.run_with_overrides`` (imported late: it pulls in Hydra and the training stack)."""
    try:
        from pluto.train import run_with_overrides
    except ImportError as exc:
        raise ConfigError(f"pluto sweep needs pluto.train.run_with_overrides, which cannot be imported ({exc}); "
                          "update pluto or run the sweep from Python with run_sweep(spec, run_fn=...)") from exc
    return run_with_overrides


def open_storage(url: str | None, out: Path) -> Any:
    """The Optuna storage for ``--storage``: ``journal:PATH``, a SQLAlchemy URL, or (None) ``out/optuna.db``."""
    import optuna

    if url is None:
        url = f"sqlite:///{(out / 'optuna.db').resolve()}"
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):]).expanduser()
        if not path.name:
            raise ConfigError("--storage journal:PATH needs a file path, e.g. journal:/shared/sweeps/study.log")
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise ConfigError(f"cannot read --storage {url!r}; give a SQLAlchemy URL (sqlite:///path.db, "
                          "postgresql://user@host/db) or journal:PATH")
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # a missing driver, an unreachable server, a bad URL
        raise ConfigError(f"cannot open --storage {url}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc


WORKER = f"{socket.gethostname()}:{os.getpid()}"


def _alive_here(worker: str) -> bool | None:
    """Whether ``host:pid`` is a live process: None when it ran on another host (unknown from here)."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _is_stale(trial: Any, heartbeat: float, now: float) -> bool:
    """A running trial is stale when its worker's process is gone (same host) or it missed 3 heartbeats."""
    attrs = trial.system_attrs
    worker = attrs.get("pluto:worker")
    if worker == WORKER:
        return False
    if worker is not None and _alive_here(worker) is False:
        return True
    interval = float(attrs.get("pluto:heartbeat_interval", heartbeat))
    started = trial.datetime_start.timestamp() if trial.datetime_start else now
    last = float(attrs.get("pluto:heartbeat", started))  # none yet: count from the start
    return now - last > 3 * interval


def reclaim_stale(study: Any, heartbeat: float = 30.0) -> int:
    """Mark running trials of dead workers FAIL and queue their parameters again; returns how many.

    Marking FAIL succeeds for one worker only (the storage refuses to finish a finished trial), so a
    dead trial is re-queued once however many workers notice it.
    """
    import optuna

    storage, now, reclaimed = study._storage, time.time(), 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if not _is_stale(t, heartbeat, now):
            continue
        try:
            if not storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker reclaimed it first
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        reclaimed += 1
    return reclaimed


class _Heartbeat:
    """Writes ``pluto:heartbeat`` on a running trial every ``interval`` seconds, from a daemon thread."""

    def __init__(self, study: Any, trial_id: int, interval: float):
        self.study, self.trial_id, self.interval = study, trial_id, interval
        self._stop = threading.Event()
        self._beat()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        self.study._storage.set_trial_system_attr(self.trial_id, "pluto:heartbeat", time.time())
        self.study._storage.set_trial_system_attr(self.trial_id, "pluto:heartbeat_interval", self.interval)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._beat()
            except Exception:  # the trial finished (or the storage hiccuped): the next beat or the end decides
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _counts(study: Any) -> tuple[int, int]:
    import optuna

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return states.count(optuna.trial.TrialState.COMPLETE), states.count(optuna.trial.TrialState.RUNNING)


def run_sweep(spec: SweepSpec, run_fn: RunFn | None = None) -> Any:
    """Run (or resume, or join) the study until ``spec.trials`` trials have completed; returns the ``optuna.Study``."""
    import optuna

    if spec.direction not in ("maximize", "minimize"):
        raise ConfigError(f"--direction must be maximize or minimize, got {spec.direction!r}")
    if spec.trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {spec.trials}")
    if not spec.heartbeat > 0:
        raise ConfigError(f"--heartbeat must be > 0 seconds, got {spec.heartbeat}")
    run = run_fn or load_runner()
    spec.out.mkdir(parents=True, exist_ok=True)
    storage = open_storage(spec.storage, spec.out)
    bounds = list(spec.constraints)
    native = hasattr(optuna.trial.Trial, "set_constraint")  # optuna >= 5; older ones take constraints_func
    shared = spec.storage is not None  # other workers may be running: per-worker seeds, constant liar
    seed = (spec.seed * 1_000_003 + os.getpid()) % 2**32 if shared else spec.seed
    sampler = optuna.samplers.TPESampler(
        seed=seed, constant_liar=shared,
        constraints_func=(lambda t: t.user_attrs["constraints"]) if bounds and not native else None)
    study = optuna.create_study(study_name=spec.study_name, storage=storage, direction=spec.direction,
                                sampler=sampler, load_if_exists=True)

    def objective(trial: Any) -> float:
        beat = _Heartbeat(study, trial._trial_id, spec.heartbeat)
        try:
            return _run_trial(trial)
        finally:
            beat.stop()

    def _run_trial(trial: Any) -> float:
        values = {p.name: p.suggest(trial) for p in spec.params}
        overrides = ([f"recipe={spec.recipe}"] if spec.recipe else []) + list(spec.overrides) + \
            [f"{k}={v}" for k, v in values.items()]
        trial.set_user_attr("overrides", overrides)
        run_dir = spec.out / spec.study_name / f"trial_{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        try:
            result = run(overrides, run_dir)
        except Exception as exc:
            if type(exc).__module__.startswith(("hydra", "omegaconf")):  # a bad --param / --override key or value
                raise ConfigError(f"trial {trial.number}: the overrides {overrides} do not compose: {exc}. "
                                  "Check the --param and --override names against `pluto train --help` / configs/")
            raise
        metrics = {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if spec.metric not in metrics:
            raise ConfigError(f"--metric {spec.metric!r} is not among the run's results {sorted(metrics)}; "
                              "pick one of those")
        for key, value in metrics.items():
            trial.set_user_attr(f"metric/{key}", value)
        if bounds:
            excess = [b.excess(metrics) for b in bounds]
            trial.set_user_attr("constraints", excess)
            if native:
                for bound, value in zip(bounds, excess):
                    trial.set_constraint(f"{bound.key}{bound.op}{bound.value:g}", value)
        return metrics[spec.metric]

    while True:
        reclaim_stale(study, spec.heartbeat)
        done, running = _counts(study)
        if done + running >= spec.trials:
            break
        trial = study.ask()
        study._storage.set_trial_system_attr(trial._trial_id, "pluto:worker", WORKER)
        try:
            value = objective(trial)
        except BaseException:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        study.tell(trial, value)
    study.trials_dataframe().to_csv(spec.out / f"{spec.study_name}_trials.csv", index=False)
    return study


def best_feasible_trial(study: Any) -> Any | None:
    """The best completed trial whose constraints (if any) all hold, or None."""
    import optuna

    trials = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
              if all(c <= 0 for c in t.user_attrs.get("constraints", []))]
    if not trials:
        return None
    sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
    return max(trials, key=lambda t: sign * t.value)


def _cmd_sweep(args: argparse.Namespace) -> int:
    import optuna

    spec = SweepSpec(
        recipe=args.recipe, params=[ParamSpec.parse(p) for p in args.param], trials=args.trials,
        study_name=args.study_name, out=Path(args.out), metric=args.metric, direction=args.direction,
        constraints=[MetricBound.parse(c) for c in args.constraint], overrides=list(args.override), seed=args.seed,
        storage=args.storage, heartbeat=args.heartbeat)
    if not spec.params:
        raise ConfigError("nothing to search: give at least one --param, e.g. --param optim.lr=1e-4:1e-1:log")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = run_sweep(spec)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    where = spec.storage or f"sqlite:///{spec.out / 'optuna.db'}"
    print(f"study {spec.study_name!r}: {len(complete)} completed trials in {where}")
    best = best_feasible_trial(study)
    if best is None:
        print("no feasible trial yet: every completed trial violates a --constraint")
        return 1
    print(f"best trial #{best.number}: {spec.metric}={best.value:.6g}")
    for key, value in best.params.items():
        print(f"  {key}={value}")
    print(f"run dir: {best.user_attrs.get('run_dir')}")
    print("rerun it with: pluto train " + " ".join(best.user_attrs.get("overrides", [])))
    return 0


def register(subparsers: Any) -> None:
    """Add ``pluto sweep`` to the ``pluto`` command."""
    p = subparsers.add_parser("sweep", help="Optuna hyperparameter search over a recipe (resumable study)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default=None, help="recipe name passed as recipe=<name> to every trial")
    p.add_argument("--param", action="append", default=[], metavar="NAME=SPEC",
                   help="searched hyperparameter: name=low:high[:log] or name=a,b,c (repeatable)")
    p.add_argument("--trials", type=int, default=20, help="completed trials the study should have (default 20)")
    p.add_argument("--study-name", default="sweep", help="study to create or resume (default: sweep)")
    p.add_argument("--out", default="outputs/sweeps", help="folder for the trials' run folders, the trials CSV and "
                   "(without --storage) optuna.db")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="shared Optuna storage: a SQLAlchemy URL (postgresql://..., sqlite:///...) or journal:PATH "
                        "(a file on a shared file system); workers given the same one share the study")
    p.add_argument("--heartbeat", type=float, default=30.0, metavar="SECONDS",
                   help="a running trial's heartbeat interval; after 3 missed beats another worker reruns it")
    p.add_argument("--metric", default="accuracy", help="returned metric to optimize (default accuracy)")
    p.add_argument("--direction", default="maximize", choices=("maximize", "minimize"))
    p.add_argument("--constraint", action="append", default=[], metavar="KEY<=VALUE",
                   help="bound on a returned metric, e.g. latency_ms<=0.5 (repeatable)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="fixed Hydra override for every trial (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (with --storage, mixed with the worker's pid)")
    p.set_defaults(func=_cmd_sweep)


__all__ = ["register", "run_sweep", "SweepSpec", "ParamSpec", "MetricBound", "best_feasible_trial", "load_runner",
           "open_storage", "reclaim_stale"]
