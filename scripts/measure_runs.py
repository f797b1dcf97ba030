"""Measure finished compression runs on *this* machine and print the verdict per constraint.

A run trained on a GPU for a CPU table (or vice versa) ends with "predicted only"; copy its run
folder here and this script measures the exported ONNX with the table's runtime and threads,
then prints accuracy, predicted vs measured latency and whether each constraint holds *as
measured*. It writes ``report_measured.json`` beside each ``report.json``.

    python scripts/measure_runs.py outputs/fmnist-small_cnn-cpu_int8 [more run dirs...]
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import pandas as pd
import torch
import yaml

from pluto.cost.runtimes import device_info
from pluto.cost.table import LatencyTable
from pluto.optimizer.report import measure_latency, table_device_is_here


def measure_run(run_dir: Path, table_override: str | None = None, samples: int = 100) -> list[dict]:
    report = json.loads((run_dir / "report.json").read_text())
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    table = LatencyTable.load(table_override or cfg["hw"]["table"])
    if not table_device_is_here(table):
        raise SystemExit(f"{run_dir}: table {table.metadata.get('name')} was measured on {table.device.get('name')}, "
                         f"this machine is {device_info(table.device.get('type', 'cpu')).get('name')}")
    onnx = Path(report["result"]["onnx"])
    onnx = onnx if onnx.exists() else run_dir / onnx.name
    data = cfg["data"]
    size = 32 if data["name"] == "cifar10" else int(data.get("input_size", 28) or 28)
    channels = 3 if data["name"] == "cifar10" else int(data.get("in_channels", 1) or 1)
    torch.set_num_threads(int(table.metadata.get("threads") or 1))
    measured = measure_latency(table, None, onnx, (1, channels, size, size), samples=samples)
    rows = []
    for verdict in report["constraints"]:
        if verdict["metric"] == "latency_ms":
            verdict.update(measured=measured["latency_ms"], holds=measured["latency_ms"] <= verdict["target"],
                           basis=f"measured here {date.today()} ({device_info('cpu')['name']})")
        rows.append({"run": run_dir.name, "accuracy": report["result"]["accuracy"], "constraint": verdict["constraint"],
                     "predicted": verdict["predicted"], "measured": verdict["measured"],
                     "error_pct": None if verdict["measured"] in (None, 0) or verdict["predicted"] is None
                     else 100 * (verdict["predicted"] - verdict["measured"]) / verdict["measured"],
                     "holds": verdict["holds"], "params": report["result"]["params"]})
    report["measured_here"] = {**measured, "device": device_info("cpu"), "date": str(date.today())}
    (run_dir / "report_measured.json").write_text(json.dumps(report, indent=2, default=float))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--table", default=None, help="table folder to use instead of the run's hw.table")
    parser.add_argument("--samples", type=int, default=100)
    args = parser.parse_args(argv)
    rows = [row for run in args.runs for row in measure_run(run, args.table, args.samples)]
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
