"""CLI: ``pluto profile``, ``pluto predict``, ``pluto validate``, ``pluto measure``, ``pluto table ...``."""
from __future__ import annotations

import argparse
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
    return shape


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
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads on CPU (fixed for reproducibility)")
    p.add_argument("--energy", default="auto", choices=("auto", "nvml", "rapl", "none"))
    p.add_argument("--samples", type=int, default=24, help="timed samples per entry, split over --rounds")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per entry (median of round medians)")
    p.add_argument("--chunk", type=int, default=64, help="units kept prepared while their rounds interleave")
    p.add_argument("--no-pin", action="store_true", help="do not pin single-threaded profiling to one core")
    p.add_argument("--energy-window", type=float, default=0.3, help="seconds of sustained loop per energy reading")
    p.add_argument("--limit", type=int, default=None, help="measure at most this many new entries, then stop")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_profile)

    p = subparsers.add_parser("predict", help="predicted latency/energy of a model from a table")
    _model_args(p)
    p.add_argument("--metric", default="latency_ms", choices=("latency_ms", "energy_mj", "size_bytes", "macs"))
    p.set_defaults(func=_predict)

    p = subparsers.add_parser("validate", help="measure a model now on this machine and compare with the table")
    _model_args(p)
    p.add_argument("--tolerance", type=float, default=10.0, help="percent error counted as a pass")
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
    q = sub.add_parser("calibrate", help="re-measure a table's whole calibration networks on this machine and re-fit")
    q.add_argument("table")
    q.add_argument("--space", default=None, help="take the calibration section from this space config")
    q.set_defaults(func=_calibrate)
    q = sub.add_parser("refit", help="re-fit a table's calibration from its stored whole-network measurements")
    q.add_argument("table")
    q.set_defaults(func=_refit)
    q = sub.add_parser("import", help="add energy from an external power meter's CSV to a table")
    q.add_argument("table", help="existing table folder")
    q.add_argument("csv", help="CSV with the table's key columns + energy_mj, or time_s,power_w trace + --log")
    q.add_argument("--out", required=True, help="folder for the table with energy")
    q.add_argument("--meter", default="external", help="meter name recorded in the metadata")
    q.set_defaults(func=_import)


def _model_args(p) -> None:
    p.add_argument("--table", required=True, help="table folder, e.g. latency_tables/cpu_ort")
    p.add_argument("--model", required=True,
                   help="registry name (pluto.models), 'package.module:function' returning an nn.Module, or a .pt "
                        "checkpoint saved as {'model': registry name, 'kwargs': {...}, 'state_dict': ...}")
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
        ckpt = torch.load(spec, weights_only=True, map_location="cpu")
        if not isinstance(ckpt, dict) or "model" not in ckpt:
            raise ConfigError(f"{spec} is not a pluto model checkpoint (needs keys 'model' and 'state_dict'); "
                              "pass a registry name with --kwargs instead")
        model = create_model(ckpt["model"], in_channels=input_shape[0], input_size=input_shape[-1],
                             **ckpt.get("kwargs", {}))
        model.load_state_dict(ckpt["state_dict"], strict=False)
        return model.eval()
    if ":" in spec:
        module_name, _, fn = spec.partition(":")
        try:
            return getattr(importlib.import_module(module_name), fn)(**kwargs).eval()
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"cannot import model factory {spec!r}: {exc}") from exc
    if spec.endswith(".onnx"):
        raise ConfigError("pluto predicts from PyTorch models (the table keys come from a torch.fx trace); pass the "
                          "registry name or 'module:function' the ONNX file was exported from")
    if spec not in list_models():
        raise ConfigError(f"unknown model {spec!r}; registered: {', '.join(list_models())}")
    return create_model(spec, in_channels=input_shape[0], input_size=input_shape[-1], **kwargs).eval()


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


def _profile(args) -> int:
    from pluto.cost.profiler import profile

    if args.batch < 1 or args.threads < 1 or args.samples < 3 or args.rounds < 1:
        raise ConfigError(f"--batch, --threads and --rounds must be >= 1 and --samples >= 3 (got batch {args.batch}, "
                          f"threads {args.threads}, rounds {args.rounds}, samples {args.samples})")
    precisions = tuple(p.strip() for p in args.precision.split(",") if p.strip())
    command = "pluto " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    space = profile_space(args.space, args.model, args.input_shape, Path(args.out))
    table = profile(space, args.out, args.device, args.runtime, precisions, args.batch,
                    args.threads, args.energy, args.samples, energy_window_s=args.energy_window, command=command,
                    progress=not args.no_progress, limit=args.limit, rounds=args.rounds, chunk=args.chunk,
                    pin=not args.no_pin)
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
    value = table.predict_ops(ops, args.metric, args.precision)
    unit = "ms" if args.metric == "latency_ms" else "mJ"
    print(f"{args.model} {'x'.join(map(str, args.input_shape))} on {table.device['name']} / {table.runtime} "
          f"{args.precision}, batch {table.metadata['batch']}: {value:.4f} {unit} ({len(ops)} ops)")
    return 0


def _validate(args) -> int:
    from pluto.cost.measure import Measurer
    from pluto.cost.ops import extract_ops
    from pluto.cost.table import LatencyTable

    table = LatencyTable.load(args.table)
    measurer = Measurer(table)
    ok, why = measurer.reachable()
    if not ok:
        raise TableError(f"cannot validate {args.table} here: {why}")
    from pluto.cost.machine import mismatch

    note = mismatch({**table.metadata, "path": args.table})
    if note:
        print(f"note: {note}")
    model = load_model(args.model, args.input_shape, _kwargs(args.kwargs))
    ops = extract_ops(model, args.input_shape)
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
    refit(table)
    table.save(args.table)
    return _show(args)


def _calibrate(args) -> int:
    from pluto.cost.energy import open_meter
    from pluto.cost.profiler import calibrate
    from pluto.cost.runtimes import Runtime, device_info
    from pluto.cost.space import ProfileSpace
    from pluto.cost.table import LatencyTable

    table = LatencyTable.load(args.table)
    device = table.device["type"]
    here = device_info(device) if device == "cpu" or _cuda() else {"name": "no CUDA device"}
    if here["name"] != table.device["name"]:
        raise TableError(f"table {args.table} was measured on '{table.device['name']}', this machine has "
                         f"'{here['name']}'; calibrate it on that device.")
    if args.space:
        table.metadata["space"]["calibration"] = ProfileSpace.load(args.space).calibration
        table.metadata["calibration_command"] = "pluto " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    runtime = Runtime(table.runtime, device, table.metadata.get("threads") or 1)
    meter = open_meter("auto", device) if "energy_mj" in table.metrics else None
    space = ProfileSpace.from_dict(table.metadata["space"])
    calibrate(table, runtime, space.calibration_networks(), table.precisions, meter)
    table.save(args.table)
    return _show(args)
