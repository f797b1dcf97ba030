"""CLI: ``pluto profile``, ``pluto predict``, ``pluto validate``, ``pluto measure``, ``pluto table ...``."""
from __future__ import annotations

import argparse
import datetime as dt
import math
import shlex
import sys
from pathlib import Path

from pluto.errors import ConfigError, TableError


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"input shape {text!r} must look like 1,28,28 (C,H,W)") from exc
    if len(shape) != 3:
        raise argparse.ArgumentTypeError(f"input shape {text!r} must have 3 values C,H,W")
    if not (1 <= shape[0] <= 4096 and all(8 <= v <= 8192 for v in shape[1:])):
        raise argparse.ArgumentTypeError(f"input shape {text!r}: channels must be in 1..4096 and H, W in 8..8192")
    return shape


def _bounded(kind: type, lo: float, hi: float | None = None, lo_open: bool = False):
    """An argparse type: a number of ``kind`` in [lo, hi] (or (lo, hi] with ``lo_open``), else a one-line error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole number' if kind is int else 'number'}")
        if value != value or (lo_open and value <= lo) or value < lo or (hi is not None and value > hi):
            bound = f"> {lo:g}" if lo_open else f">= {lo:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {bound}"
                                             + (f" and <= {hi:g}" if hi is not None else ""))
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


MODEL_HELP = ("registry name (pluto.models), 'package.module:function' returning an nn.Module, or a .pt checkpoint "
              "saved as {'model': registry name, 'kwargs': {...}, 'state_dict': ...}. NOTE: 'module:function' "
              "imports that module and calls that function with your user's rights - pass only code you trust")


def register(subparsers) -> None:
    p = subparsers.add_parser("profile", help="measure a space's ops on this machine into a latency table")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--runtime", choices=("torch", "onnxruntime", "cudagraph"), default="onnxruntime")
    p.add_argument("--precision", default="fp32", help="comma list of fp32,fp16,int8")
    p.add_argument("--space", default=None, help="space config YAML, e.g. configs/space/fmnist_cifar.yaml")
    p.add_argument("--model", default=None,
                   help="comma list of registry models: add exactly their ops and pruned widths (with --input-shape) "
                        "to the table; into an existing --out table they are merged with its space")
    p.add_argument("--input-shape", type=_shape, action="append", default=None,
                   help="C,H,W for --model (repeat for several, e.g. --input-shape 1,28,28 --input-shape 3,32,32)")
    p.add_argument("--out", required=True, help="table folder, e.g. latency_tables/cpu_ort")
    p.add_argument("--batch", type=_bounded(int, 1, 65536), default=1)
    p.add_argument("--threads", type=_bounded(int, 1, 4096), default=1,
                   help="intra-op threads on CPU (fixed for reproducibility)")
    p.add_argument("--energy", default="auto", choices=("auto", "nvml", "rapl", "none"))
    p.add_argument("--samples", type=_bounded(int, 3, 100_000), default=24,
                   help="timed samples per entry, split over --rounds (median, IQR, Tukey outliers; at least 3)")
    p.add_argument("--rounds", type=_bounded(int, 1, 1000), default=3,
                   help="interleaved rounds per entry (median of round medians)")
    p.add_argument("--chunk", type=_bounded(int, 1, 100_000), default=64,
                   help="units kept prepared while their rounds interleave")
    p.add_argument("--no-pin", action="store_true", help="do not pin single-threaded profiling to one core")
    p.add_argument("--precision-space", action="append", default=None, metavar="PRECISION=SPACE",
                   help="profile PRECISION only over this (smaller) space, e.g. int8=configs/space/cpu_int8.yaml")
    p.add_argument("--energy-window", type=_bounded(float, 0.0, 600.0, lo_open=True), default=0.3,
                   help="seconds of sustained loop per energy reading")
    p.add_argument("--limit", type=_bounded(int, 1), default=None, help="measure at most this many new entries, then stop")
    p.add_argument("--unaligned", action="store_true", help="also measure channel counts that are not multiples of "
                   "the fast kernel width (each grid knot k gets k - 1: the slow-kernel regime of unrounded pruned "
                   "widths), on their own grid; added to an existing --out table, only the new points are timed")
    p.add_argument("--refresh", action="store_true", help="re-time the --out table's existing entries too (e.g. "
                   "when its reference kernels show the machine changed since they were measured; the old rows are "
                   "kept as entries.stale-<date>.csv and a killed run resumes them)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_profile)

    p = subparsers.add_parser("predict", help="predicted latency/energy of a model from a table")
    _model_args(p)
    p.add_argument("--metric", default="latency_ms", choices=("latency_ms", "energy_mj", "size_bytes", "macs"))
    p.add_argument("--strict", action="store_true",
                   help="refuse (exit 2) instead of warning when the model has ops outside the table's measured "
                        "resolutions or channel counts")
    p.set_defaults(func=_predict)

    p = subparsers.add_parser("validate", help="measure a model now on this machine and compare with the table")
    _model_args(p)
    p.add_argument("--tolerance", type=_bounded(float, 0.0, 1e6, lo_open=True), default=10.0,
                   help="percent error counted as a pass")
    p.add_argument("--strict", action="store_true", help="refuse models the table did not measure (see predict)")
    p.set_defaults(func=_validate)

    p = subparsers.add_parser("measure", help="measure finished compression runs on the table's chip; verdict per constraint")
    p.add_argument("runs", nargs="+", help="run folders (with report.json and the exported ONNX)")
    p.add_argument("--table", default=None, help="table folder instead of the run's hw.table")
    p.add_argument("--runner", default=None, help="remote runner template, e.g. 'ssh board ./bench {onnx}'")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.set_defaults(func=_measure_runs)

    p = subparsers.add_parser("table", help="inspect tables or import external power-meter readings")
    sub = p.add_subparsers(dest="table_command", required=True)
    q = sub.add_parser("show", help="print a table's metadata summary")
    q.add_argument("table")
    q.set_defaults(func=_show)
    q = sub.add_parser("calibrate", help="adapt a table to this machine in under a minute: time reference kernels and "
                                         "<= 20 reference networks here, refit the calibration")
    q.add_argument("table")
    q.add_argument("--out", default=None, help="write the adapted table here (default: in place)")
    q.add_argument("--networks", type=_bounded(int, 3, 200), default=20, help="reference networks to time")
    q.add_argument("--rounds", type=_bounded(int, 1, 100), default=3)
    q.add_argument("--samples", type=_bounded(int, 3, 10_000), default=24)
    q.add_argument("--prior", type=_bounded(float, 0.0, 1e6), default=None,
                   help="pull of the refit towards the table's own fit, set to this machine's level (0 = fit the "
                        "references alone); default: refit when the references hold enough networks per (family, "
                        "input shape) to pin the op groups, else set the level alone (printed per precision)")
    q.set_defaults(func=_calibrate)
    q = sub.add_parser("check", help="time the reference kernels here: does the table describe this machine?")
    q.add_argument("table")
    q.add_argument("--entries", type=_bounded(int, 1, 1000), default=None, metavar="K",
                   help="also re-time K of the table's own entries per op group and print time here / entry per "
                        "group (shows which kernel classes moved; ~1 s per 10 entries)")
    q.add_argument("--precision", default=None, help="precision to check (default: fp32 if the table has it)")
    q.set_defaults(func=_check)
    q = sub.add_parser("refit", help="re-fit a table's calibration from its stored whole-network measurements")
    q.add_argument("table")
    q.add_argument("--per-op-groups", action="store_true",
                   help="a signed per-op term per op group (better held-out zoo figures on cpu_ort_xeon_amx, but it "
                        "priced dropping residual blocks wrongly there: opt-in)")
    q.set_defaults(func=_refit)
    q = sub.add_parser("remeasure", help="re-time a table's whole calibration networks on the machine it was "
                                         "profiled on and refit from scratch (after a change in how networks are timed)")
    q.add_argument("table")
    q.add_argument("--precision", default=None, help="comma-separated precisions (default: all of the table's)")
    q.add_argument("--out", default=None, help="write the table here (default: in place)")
    q.add_argument("--samples", type=_bounded(int, 3, 10_000), default=30)
    q.add_argument("--boundaries", action="store_true",
                   help="re-time only the mixed int8/fp32 networks (with the reference kernels, so the machine's "
                        "level since the calibration is taken out) and refit the price of a precision change")
    q.set_defaults(func=_remeasure)
    q = sub.add_parser("import", help="add energy from an external power meter's CSV to a table")
    q.add_argument("table", help="existing table folder")
    q.add_argument("csv", help="CSV with the table's key columns + energy_mj, or time_s,power_w trace + --log")
    q.add_argument("--out", required=True, help="folder for the table with energy")
    q.add_argument("--meter", default="external", help="meter name recorded in the metadata")
    q.set_defaults(func=_import)


def _model_args(p) -> None:
    p.add_argument("--table", required=True, help="table folder, e.g. latency_tables/cpu_ort")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--input-shape", type=_shape, default=(1, 28, 28), help="C,H,W (default 1,28,28)")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--kwargs", default="", help="model constructor kwargs, e.g. width=0.5")


def _kwargs(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        try:
            out[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            out[key] = value
    return out


def load_model(spec: str, input_shape: tuple[int, ...], kwargs: dict | None = None):
    """An eval-mode nn.Module from a registry name, 'module:function', or a safe (weights_only) checkpoint."""
    import importlib

    import torch

    from pluto.models import create_model, list_models

    kwargs = kwargs or {}
    if spec.endswith((".pt", ".pth")):
        if not Path(spec).exists():
            raise ConfigError(f"no checkpoint at {spec}")
        from pluto.engine.checkpoint import load_checkpoint

        ckpt = load_checkpoint(spec)
        if not isinstance(ckpt.get("model"), str) or not isinstance(ckpt.get("state_dict"), dict):
            raise ConfigError(f"{spec} is not a pluto model checkpoint (needs keys 'model' and 'state_dict'); "
                              "pass a registry name with --kwargs instead")
        model = _build(create_model, ckpt["model"], input_shape, ckpt.get("kwargs") or {})
        try:
            model.load_state_dict(ckpt["state_dict"], strict=False)
        except RuntimeError as exc:
            detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
            raise ConfigError(f"{spec}'s state_dict does not fit model {ckpt['model']!r} ({detail})") from exc
        return model.eval()
    if ":" in spec:  # runs the named code with the user's rights (documented in --model's help and the README)
        module_name, _, fn = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), fn)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigError(f"cannot import model factory {spec!r}: {exc}") from exc
        if not callable(factory):
            raise ConfigError(f"{spec} is a {type(factory).__name__}, not a function returning an nn.Module")
        try:
            model = factory(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"{spec}(**{kwargs}) failed: {exc}; check --kwargs") from exc
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"{spec} returned a {type(model).__name__}, not an nn.Module")
        return model.eval()
    if spec.endswith(".onnx"):
        raise ConfigError("pluto predicts from PyTorch models (the table keys come from a torch.fx trace); pass the "
                          "registry name or 'module:function' the ONNX file was exported from")
    if spec not in list_models():
        raise ConfigError(f"unknown model {spec!r}; registered: {', '.join(list_models())}")
    return _build(create_model, spec, input_shape, kwargs).eval()


def _build(create_model, name: str, input_shape: tuple[int, ...], kwargs) -> "torch.nn.Module":
    """create_model with a ConfigError naming the arguments when they do not fit the model."""
    if not isinstance(kwargs, dict):
        raise ConfigError(f"model kwargs must be key=value pairs, got {kwargs!r}")
    try:
        return create_model(name, in_channels=input_shape[0], input_size=input_shape[-1], **kwargs)
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError) as exc:
        raise ConfigError(f"model {name!r} cannot be built with input {input_shape} and {kwargs or 'no kwargs'} "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); check --kwargs "
                          "and --input-shape") from exc


ZOO_SPACE = {"channel_grid": [8, 16, 32, 64, 128, 256, 512, 1024, 2048], "min_width": 0.25, "align": 8,
             "calibration": {"mbconv": 0, "resnet": 0, "models": True, "seed": 0}}


def profile_space(space_path: str | None, models: str | None, shapes: list[tuple[int, ...]] | None,
                  out: Path) -> "ProfileSpace":
    """The space to profile: ``--space``, plus ``--model`` entries, merged into ``out``'s existing space if any."""
    import json

    from pluto.cost.space import ProfileSpace
    from pluto.models import list_models

    if not space_path and not models:
        raise ConfigError("pluto profile needs --space FILE or --model NAME[,NAME...] (or both)")
    data: dict = {}
    meta = out / "metadata.json"
    if meta.exists():
        try:
            data = dict(json.loads(meta.read_text()).get("space") or {})
        except json.JSONDecodeError as exc:
            raise TableError(f"{meta} is corrupt ({exc}); delete {out} or choose another --out") from exc
    if space_path:
        new = ProfileSpace.load(space_path).source
        for key, value in new.items():
            if key in ("models", "mbconv", "resnet") and data.get(key):
                value = data[key] + [v for v in value if v not in data[key]]
            data[key] = value
    if models:
        names = [m.strip() for m in models.split(",") if m.strip()]
        unknown = [m for m in names if m not in list_models()]
        if unknown:
            raise ConfigError(f"unknown model(s) {unknown}; registered: {', '.join(list_models())}")
        entries = [{"name": n, "input_shape": list(sh)} for n in names for sh in (shapes or [(1, 28, 28)])]
        for key, value in ZOO_SPACE.items():
            data.setdefault(key, value)
        data["models"] = list(data.get("models") or []) + [e for e in entries if e not in (data.get("models") or [])]
    data.setdefault("name", out.name)
    return ProfileSpace.from_dict(data)


def _precision_spaces(items: list[str] | None, unaligned: bool = False) -> dict:
    from pluto.cost.space import ProfileSpace

    out = {}
    for item in items or []:
        precision, sep, path = item.partition("=")
        if not sep or not path:
            raise ConfigError(f"--precision-space {item!r}: write PRECISION=SPACE_YAML, e.g. int8=configs/space/cpu_int8.yaml")
        out[precision.strip()] = _with_unaligned(ProfileSpace.load(path.strip()), unaligned)
    return out


def _with_unaligned(space: "ProfileSpace", unaligned: bool) -> "ProfileSpace":
    """``space`` with its unaligned grid points switched on (``--unaligned``), recorded in its source."""
    import dataclasses

    if not unaligned or space.unaligned:
        return space
    return dataclasses.replace(space, unaligned=True, source={**space.source, "unaligned": True})


def _profile(args) -> int:
    from pluto.cost.profiler import profile

    if args.batch < 1 or args.threads < 1 or args.samples < 3 or args.rounds < 1:
        raise ConfigError(f"--batch, --threads and --rounds must be >= 1 and --samples >= 3 (got batch {args.batch}, "
                          f"threads {args.threads}, rounds {args.rounds}, samples {args.samples})")
    precisions = tuple(p.strip() for p in args.precision.split(",") if p.strip())
    command = "pluto " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    space = _with_unaligned(profile_space(args.space, args.model, args.input_shape, Path(args.out)), args.unaligned)
    table = profile(space, args.out, args.device, args.runtime, precisions, args.batch,
                    args.threads, args.energy, args.samples, energy_window_s=args.energy_window, command=command,
                    progress=not args.no_progress, limit=args.limit, rounds=args.rounds, chunk=args.chunk,
                    pin=not args.no_pin, precision_spaces=_precision_spaces(args.precision_space, args.unaligned),
                    refresh=args.refresh)
    state = "complete" if table.metadata.get("complete") else "incomplete (re-run the same command to resume)"
    print(f"{table}: {state}")
    for precision, fit in table.metadata.get("calibration", {}).items():
        lat = fit.get("latency_ms", {})
        print(f"  {precision}: calibration scales={lat.get('scales')} offset={lat.get('offset', 0):.4f} ms, "
              f"MAPE on {lat.get('n_models')} networks {lat.get('mape_uncalibrated_pct', 0):.1f}% -> "
              f"{lat.get('mape_calibrated_pct', 0):.1f}%")
    return 0


def _predict(args) -> int:
    from pluto.cost.expected import expected_cost
    from pluto.cost.ops import extract_ops
    from pluto.cost.table import LatencyTable

    model = load_model(args.model, args.input_shape, _kwargs(args.kwargs))
    ops = extract_ops(model, args.input_shape)
    if args.metric in ("size_bytes", "macs"):
        value = float(expected_cost(None, ops, args.metric, default_precision=args.precision))
        print(f"{args.model}: {value:.0f} {args.metric.split('_')[0]}")
        return 0
    table = LatencyTable.load(args.table)
    table._require(args.metric, args.precision)
    _coverage(table, ops, args.precision, args.strict)
    value = table.predict_ops(ops, args.metric, args.precision)
    unit = "ms" if args.metric == "latency_ms" else "mJ"
    print(f"{args.model} {'x'.join(map(str, args.input_shape))} on {table.device['name']} / {table.runtime} "
          f"{args.precision}, batch {table.metadata['batch']}: {value:.4f} {unit} ({len(ops)} ops)")
    return 0


def _coverage(table, ops, precision: str, strict: bool) -> None:
    """Say so (or refuse with --strict) when the prediction extrapolates beyond what the table measured."""
    import warnings

    from pluto.cost.coverage import PredictionRangeWarning, check_coverage

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PredictionRangeWarning)
        check_coverage(table, ops, precision, strict=strict)
    for warning in caught:
        print(f"pluto: warning: {warning.message} (--strict refuses such predictions)", file=sys.stderr)


def _validate(args) -> int:
    from pluto.cost.measure import Measurer
    from pluto.cost.ops import extract_ops
    from pluto.cost.table import LatencyTable

    table = LatencyTable.load(args.table)
    measurer = Measurer(table)
    ok, why = measurer.reachable()
    if not ok:
        raise TableError(f"cannot validate {args.table} here: {why}")
    from pluto.cost.machine import machine_notes

    for note in machine_notes({**table.metadata, "path": args.table}):
        print(f"note: {note}")
    model = load_model(args.model, args.input_shape, _kwargs(args.kwargs))
    ops = extract_ops(model, args.input_shape)
    table._require("latency_ms", args.precision)
    _coverage(table, ops, args.precision, args.strict)
    if args.precision == "int8":
        import torch

        from pluto.decisions.bits import prepare_qat

        model = prepare_qat(model, bits=8, example_input=torch.zeros(1, *args.input_shape),
                            calibrate=torch.randn(64, *args.input_shape))
    m = measurer.measure(model, (1, *args.input_shape))
    predicted = table.predict_ops(ops, "latency_ms", args.precision)
    error = (predicted - m.latency_ms) / m.latency_ms * 100
    print(f"{args.model}: measured {m.latency_ms:.4f} ms (IQR {m.latency_iqr_ms:.4f}), predicted {predicted:.4f} ms, "
          f"error {error:+.1f}%  [{m.machine}]")
    ok = abs(error) <= args.tolerance
    if m.energy_mj is not None:
        e_pred = table.predict_ops(ops, "energy_mj", args.precision)
        e_err = (e_pred - m.energy_mj) / m.energy_mj * 100
        print(f"  energy: measured {m.energy_mj:.4f} mJ, predicted {e_pred:.4f} mJ, error {e_err:+.1f}%")
        ok = ok and abs(e_err) <= args.tolerance
    print("PASS" if ok else f"FAIL (tolerance {args.tolerance}%)")
    return 0 if ok else 1


def _measure_runs(args) -> int:
    """``pluto measure RUN_DIR...``: re-measure runs' exported ONNX on the table's chip; ``report_measured.json``."""
    import json
    from datetime import date

    import pandas as pd
    import yaml

    from pluto.cost.measure import Measurer
    from pluto.cost.table import LatencyTable
    from pluto.optimizer.constraints import Constraint, constraints_hold, verdicts

    rows = []
    for run in map(Path, args.runs):
        if not (run / "report.json").exists():
            raise ConfigError(f"{run} has no report.json: it is not a finished compression run")
        report = json.loads((run / "report.json").read_text())
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        table = LatencyTable.load(args.table or cfg["hw"]["table"])
        measurer = Measurer(table, args.runner or cfg["hw"].get("runner"), samples=args.samples, rounds=args.rounds)
        ok, why = measurer.reachable()
        if not ok:
            raise TableError(f"{run}: cannot measure here: {why}")
        onnx = Path(report["result"]["onnx"])
        onnx = onnx if onnx.exists() else run / onnx.name
        shape = _run_input_shape(cfg)
        m = measurer.measure(input_shape=shape, onnx=onnx)
        constraints = [Constraint(v["metric"], v["metric"], v["target"]) for v in report["constraints"]]
        predicted = {v["metric"]: v["predicted"] for v in report["constraints"]}
        analytic = {c.metric: predicted[c.metric] for c in constraints if c.source == "analytic"}
        results = verdicts(constraints, {**m.as_metrics(), **analytic}, predicted)
        for v in results:
            rows.append({"run": run.name, "constraint": v["constraint"], "predicted": v["predicted"],
                         "measured": v["measured"], "holds": v["holds"],
                         "error_pct": None if not v["measured"] or v["predicted"] is None
                         else 100 * (v["predicted"] - v["measured"]) / v["measured"]})
        report["measured_here"] = {**m.as_metrics(), "machine": m.machine, "method": m.method,
                                   "date": str(date.today()), "constraints": results,
                                   "constraints_hold": constraints_hold(results)}
        (run / "report_measured.json").write_text(json.dumps(report, indent=2, default=float))
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def _run_input_shape(cfg: dict) -> tuple[int, ...]:
    data = cfg.get("data", {})
    if data.get("name") == "cifar10":
        return (1, 3, 32, 32)
    return (1, int(data.get("in_channels", 1) or 1), int(data.get("input_size", 28) or 28),
            int(data.get("input_size", 28) or 28))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _show(args) -> int:
    from pluto.cost.table import LatencyTable

    table = LatencyTable.load(args.table)
    m = table.metadata
    print(table)
    print(f"  runtime: {m['runtime']}\n  batch {m['batch']}, threads {m['threads']}, created {m['created']}")
    print(f"  command: {m['command']}")
    for precision, fit in m.get("calibration", {}).items():
        for metric in table.metrics:
            if metric in fit:
                f = fit[metric]
                scales = ", ".join(f"{g} {v:.2f}" for g, v in f.get("scales", {"all": f.get("scale", 1)}).items())
                print(f"  calibration {precision} {metric}: scales [{scales}], per MB {f.get('per_mb', 0):.4g}, per op {f.get('per_op', 0):.4g}, "
                      f"offset {f['offset']:.4g}, "
                      f"MAPE {f['mape_uncalibrated_pct']:.1f}% -> {f['mape_calibrated_pct']:.1f}%")
    for metric, f in (m.get("calibration_boundary") or {}).items():
        print(f"  precision change {metric}: {f['per_edge']:.4g} per change + {f['per_mb']:.4g} per MB crossing it, "
              f"{f['n_models']} mixed-precision networks, MAPE {f['mape_without_pct']:.1f}% -> {f['mape_with_pct']:.1f}%")
    return 0


def _import(args) -> int:
    from pluto.cost.importer import import_energy
    from pluto.cost.table import LatencyTable

    table = import_energy(LatencyTable.load(args.table), args.csv, args.meter)
    table.save(args.out)
    print(f"{table}: energy imported from {args.csv} into {args.out}")
    return 0


def _refit(args) -> int:
    from pluto.cost.profiler import refit
    from pluto.cost.table import LatencyTable

    table = LatencyTable.load(args.table)
    refit(table, per_op_groups=args.per_op_groups)
    table.save(args.table)
    return _show(args)


def _calibrate(args) -> int:
    from pluto.cost.adapt import REFS_PER_PAIR_TO_REFIT, adapt, table_families
    from pluto.cost.table import LatencyTable

    table = LatencyTable.load(args.table)
    summary = adapt(table, n=args.networks, rounds=args.rounds, samples=args.samples, prior=args.prior)
    table.metadata["calibration_command"] = "pluto " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    out = args.out or args.table
    table.save(out)
    print(f"adapted {args.table} -> {out} on {summary['machine']} in {summary['seconds']} s "
          f"({summary['networks']} reference networks)")
    for precision, p in summary["precisions"].items():
        if "skipped" in p:
            print(f"  {precision}: not adapted ({p['skipped']})")
            continue
        ratios = [v for v in p["kernel_ratio"].values() if v == v]
        kr = f"reference kernels {min(ratios):.2f}-{max(ratios):.2f}x the table's; " if ratios else ""
        energy = (f"; energy MAPE {p['mape_before_pct_energy']:.1f}% -> {p['mape_after_pct_energy']:.1f}%"
                  if "mape_before_pct_energy" in p else "")
        how = p.get("adaptation") or {}
        level = f" at level {how['level']:.3f}" if how.get("level") else ""
        pairs = len(table_families(table, precision)) or how.get("family_shapes") or 0
        hint = (f"; a refit of the op groups needs >= {REFS_PER_PAIR_TO_REFIT:g} per pair: --networks "
                f"{math.ceil(REFS_PER_PAIR_TO_REFIT * pairs)}"
                if how.get("chosen") == "level only" and how.get("rule") != "given" else "")
        how = (f"; {how['chosen']}{level} ({how['references']} references over {how['family_shapes']} family/size "
               f"pairs{hint})" if how.get("chosen") else "")
        print(f"  {precision}: {kr}reference-network MAPE {p['mape_before_pct']:.1f}% -> {p['mape_after_pct']:.1f}%"
              f"{energy}{how}")
    if summary.get("int8_weights"):
        print(f"  int8: note: {summary['int8_weights']}")
    if summary.get("energy"):
        idle = (f" (idle {summary['idle_power_w']:.1f} W here, {summary.get('idle_power_w_table') or float('nan'):.1f} W "
                "where the table was made)" if "idle_power_w" in summary else "")
        print(f"  energy: {summary['energy']}{idle}")
    args.table = out
    return _show(args)


def _remeasure(args) -> int:
    from pluto.cost.machine import fingerprint
    from pluto.cost.profiler import calibrate, calibrate_boundaries, calibration_networks
    from pluto.cost.runtimes import Runtime
    from pluto.cost.table import LatencyTable

    table = LatencyTable.load(args.table)
    made_on = table.metadata.get("settings", {}).get("fingerprint")
    if table.device.get("type", "cpu") == "cpu" and made_on != fingerprint():
        raise ConfigError(f"{args.table} was profiled on a machine with fingerprint {made_on}, this one is "
                          f"{fingerprint()}: its entries do not describe this machine. Adapt it with `pluto table "
                          f"calibrate {args.table} --out DIR` instead (or profile a table here).")
    precisions = args.precision.split(",") if args.precision else list(table.precisions)
    unknown = [p for p in precisions if p not in table.precisions]
    if unknown:
        raise ConfigError(f"{args.table} has no {', '.join(unknown)} entries (it has {', '.join(table.precisions)}); "
                          "pick --precision from those.")
    rt = Runtime(table.runtime, table.device.get("type", "cpu"), int(table.metadata.get("threads") or 1))
    if args.boundaries:
        if not {"fp32", "int8"} <= set(table.precisions) or table.runtime != "onnxruntime":
            raise ConfigError(f"{args.table} prices no precision changes (that needs fp32 and int8 entries on "
                              f"onnxruntime; it has {', '.join(table.precisions)} on {table.runtime}): drop "
                              "--boundaries")
        calibrate_boundaries(table, rt, calibration_networks(table), samples=args.samples)
    else:
        calibrate(table, rt, calibration_networks(table), precisions, samples=args.samples)
    table.metadata.setdefault("remeasured", []).append(
        {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
         "precisions": ["int8+fp32 boundaries"] if args.boundaries else precisions,
         "command": "pluto " + " ".join(shlex.quote(a) for a in sys.argv[1:])})
    table.save(args.out or args.table)
    args.table = args.out or args.table
    return _show(args)


def _check(args) -> int:
    from pluto.cost.adapt import check
    from pluto.cost.table import LatencyTable

    table = LatencyTable.load(args.table)
    result = check(table, args.precision)
    print(result["message"])
    for k, r in result["ratios"].items():
        print(f"  {k}: {r:.2f}x")
    if args.entries:
        from pluto.cost.adapt import entry_drift

        precision = args.precision or ("fp32" if "fp32" in table.precisions else table.precisions[0])
        drift = entry_drift(table, precision, args.entries)
        print(f"{args.entries} entries per op group re-timed here ({precision}); time here / entry:")
        for group, d in drift.items():
            print(f"  {group:12s} {d['ratio']:.2f}x  (n {d['n']}, {d['min']:.2f}-{d['max']:.2f})")
    return 0 if result["agrees"] else 1
