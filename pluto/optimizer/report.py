"""The end of a compression run: the concrete model measured on the table's chip, and a verdict.

The report says, per constraint, the target, the predicted cost, the *measured* cost (when this
machine is the table's device) and whether it holds as measured; plus accuracy, params/MACs and
the per-layer widths / ops / bits (``layers.csv`` and ``layers.png``).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from pluto.cost.ops import extract_ops, total_macs, total_params
from pluto.cost.runtimes import Runtime, device_info, time_call
from pluto.cost.table import LatencyTable
from pluto.data import DataSpec
from pluto.engine.loop import evaluate
from pluto.engine.run import RunContext
from pluto.optimizer.constraints import Constraint
from pluto.optimizer.cost_model import CostModel
from pluto.optimizer.decisions import Decisions


def table_device_is_here(table: LatencyTable) -> bool:
    """True when this machine is the one the table was measured on (same CPU model, or same GPU)."""
    kind = table.device.get("type", "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        return False
    return device_info(kind).get("name") == table.device.get("name")


def with_fp16_layers(model: nn.Module, bits: dict[str, int]) -> nn.Module:
    """A copy in which the layers that chose 16 bits compute in half precision (casts at their boundary)."""
    model = copy.deepcopy(model)
    for name, b in bits.items():
        if b != 16:
            continue
        layer = model.get_submodule(name).half()
        layer.register_forward_pre_hook(lambda m, args: tuple(a.half() for a in args))
        layer.register_forward_hook(lambda m, args, out: out.float())
    return model


def measure_latency(table: LatencyTable, float_model: nn.Module, onnx_path: Path | None, input_shape: tuple[int, ...],
                    samples: int = 50) -> dict[str, float]:
    """Median latency (ms) and IQR of the exported model with the table's runtime, threads and batch."""
    rt = Runtime(table.runtime, table.device.get("type", "cpu"), int(table.metadata.get("threads") or 1))
    batch = int(table.metadata.get("batch", 1))
    x = torch.randn(batch, *input_shape[1:])
    if table.runtime == "onnxruntime" and onnx_path is not None:
        work = rt.prepare_onnx(Path(onnx_path).read_bytes(), (x,))
    else:
        dev = "cuda" if rt.device == "cuda" else "cpu"
        work = rt.prepare(copy.deepcopy(float_model).eval().to(dev), (x.to(dev),))
    timing = time_call(work, samples=samples, clock=rt.clock)  # the clock the table was measured with
    out = {"latency_ms": timing.median_ms, "latency_iqr_ms": timing.iqr_ms}
    if "energy_mj" in table.metrics:
        from pluto.cost.energy import measure_energy, open_meter

        meter = open_meter("auto", rt.device)
        if meter is not None:  # same meter and sustained-loop method as the table (NVML ticks every ~100 ms)
            out["energy_mj"] = measure_energy(meter, work, timing.median_ms / 1e3, window_s=1.0)
    return out


def _layer_table(float_model: nn.Module, input_shape: tuple[int, ...], bits: dict[str, int],
                 trail: dict[str, Any], original_ops: list) -> pd.DataFrame:
    before = {op.name: op for op in original_ops}
    rows = []
    for op in extract_ops(float_model, input_shape):
        if op.kind not in ("conv", "dwconv", "linear"):
            continue
        ref = before.get(op.name)
        rows.append({"layer": op.name, "kind": op.kind, "kernel": op.kernel, "cin": op.cin, "cout": op.cout,
                     "cout_before": ref.cout if ref else None, "bits": bits.get(op.name, 32), "macs": op.macs,
                     "params": op.params})
    df = pd.DataFrame(rows)
    if "architecture" in trail:
        df.attrs["architecture"] = trail["architecture"]
    return df


def _plot_layers(df: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(df)), 4))
    x = range(len(df))
    if df["cout_before"].notna().any():
        ax.bar(x, df["cout_before"].fillna(df["cout"]), color="#dddddd", label="channels before")
    colors = {4: "#d62728", 8: "#1f77b4", 16: "#2ca02c", 32: "#7f7f7f"}
    ax.bar(x, df["cout"], color=[colors.get(int(b), "#9467bd") for b in df["bits"]], label="channels kept")
    for b, color in colors.items():
        if (df["bits"] == b).any():
            ax.bar([], [], color=color, label=f"{b}-bit")
    ax.set_xticks(list(x))
    ax.set_xticklabels(df["layer"], rotation=90, fontsize=7)
    ax.set_ylabel("output channels")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def final_report(final: nn.Module, trail: dict[str, Any], decisions: Decisions, cost_model: CostModel,
                 constraints: list[Constraint], objective, test_loader: DataLoader, spec: DataSpec, cfg: DictConfig,
                 ctx: RunContext, device: torch.device, minimum: dict[str, float],
                 start: dict[str, float]) -> dict[str, Any]:
    accuracy = evaluate(final, test_loader, device)["accuracy"]
    final = final.cpu().eval()
    if decisions.quantized:
        from pluto.decisions.bits import strip_quantization

        float_model, bits = strip_quantization(copy.deepcopy(final))
    else:
        float_model, bits = copy.deepcopy(final), {}
    input_shape = spec.input_shape
    ops = extract_ops(float_model, input_shape)
    result: dict[str, Any] = {"accuracy": accuracy, "params": float(total_params(ops)), "macs": float(total_macs(ops))}

    onnx_path = None
    if cfg.compress.get("export", True):
        onnx_path = _export(final, float_model, decisions.quantized, input_shape, ctx.dir)
        result["onnx"] = str(onnx_path)

    table = cost_model.table
    metrics = sorted({c.metric for c in constraints} | ({"latency_ms"} if table is not None else set()))
    predicted = {m: cost_model.of_model(float_model, m, bits) for m in metrics
                 if m not in ("latency_ms", "energy_mj") or (table is not None and m in table.metrics)}
    measured: dict[str, float] = {"size_bytes": predicted.get("size_bytes"), "macs": result["macs"]}
    measured_here = table is not None and table_device_is_here(table)
    if measured_here:
        runnable = with_fp16_layers(float_model, bits) if 16 in bits.values() else float_model
        measured.update(measure_latency(table, runnable, onnx_path, input_shape))
    verdicts = []
    for con in constraints:
        value = measured.get(con.metric)
        verdicts.append({"constraint": str(con), "metric": con.metric, "target": con.target,
                         "uncompressed": start.get(con.metric), "minimum_reachable": minimum.get(con.metric),
                         "predicted": predicted.get(con.metric), "measured": value,
                         "holds": None if value is None else bool(value <= con.target),
                         "basis": "measured" if value is not None else "predicted only (table device is not this machine)"})
    for m, v in predicted.items():
        result[f"predicted_{m}"] = v
    for m in ("latency_ms", "latency_iqr_ms", "energy_mj"):
        if m in measured:
            result[f"measured_{m}"] = measured[m]
    result["constraints_hold"] = float(all(v["holds"] for v in verdicts if v["holds"] is not None))
    result["objective"] = accuracy if result["constraints_hold"] else accuracy - 100.0

    layers = _layer_table(float_model, input_shape, bits, trail, cost_model.ops)
    if len(layers):
        layers.to_csv(ctx.dir / "layers.csv", index=False)
        _plot_layers(layers, ctx.dir / "layers.png", f"{cfg.model.name}: widths and bits after compression")
    ctx.write_json("report.json", {"result": result, "constraints": verdicts, "multipliers": objective.lambdas(),
                                   "decisions": trail, "table": table.metadata.get("name") if table else None,
                                   "measured_on": device_info("cpu") if measured_here else None})
    ctx.logger.scalars({"final/accuracy": accuracy, **{f"final/predicted_{k}": v for k, v in predicted.items()},
                        **{f"final/measured_{k}": v for k, v in measured.items() if v is not None}}, 0)
    _print(result, verdicts, layers)
    return result


def _export(final: nn.Module, float_model: nn.Module, quantized: bool, input_shape, out_dir: Path) -> Path:
    example = torch.randn(*input_shape)
    if quantized:
        from pluto.materialize.export import export_onnx

        return Path(export_onnx(final, example, out_dir / "model_int8.onnx", int8=True))
    from pluto.cost.runtimes import export_onnx as export_fp32

    path = out_dir / "model_fp32.onnx"
    path.write_bytes(export_fp32(float_model.eval(), (example,)))
    return path


def _print(result: dict[str, Any], verdicts: list[dict], layers: pd.DataFrame) -> None:
    print("\n== pluto compression report ==")
    print(f"accuracy {result['accuracy']:.2f}%  params {result['params']:.0f}  MACs {result['macs']:.0f}")
    for v in verdicts:
        measured = "n/a" if v["measured"] is None else f"{v['measured']:.4g}"
        predicted = "n/a" if v["predicted"] is None else f"{v['predicted']:.4g}"
        status = {True: "HOLDS", False: "VIOLATED", None: "NOT MEASURED"}[v["holds"]]
        print(f"  {v['constraint']}: predicted {predicted}, measured {measured} -> {status} ({v['basis']})")
    if len(layers):
        print(layers.to_string(index=False, max_rows=60))
