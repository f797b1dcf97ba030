"""The end of a compression run: the concrete model measured on the table's chip, and a verdict.

The report says, per constraint, the target, the predicted cost, the *measured* cost (from
:class:`pluto.cost.measure.Measurer`, when the table's chip was reachable) and whether it holds as
measured — ``constraints_hold`` is 1 only when every constraint was measured (or is analytic) and
holds; plus the task metric beside the dense reference, params/MACs and the per-layer widths / ops /
bits (``layers.csv`` and ``layers.png``).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from pluto.cost.metrics import needs_table
from pluto.cost.ops import extract_ops, total_macs, total_params
from pluto.errors import TableError
from pluto.optimizer.constraints import constraints_hold, verdicts


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




def _original_ops(run) -> list:
    """The ops before compression, named as the final model names them; for a NAS child, its architecture at the
    space's full widths (a supernet has no ops of its own in the cost model)."""
    if run.cost_model.ops or "architecture" not in run.trail:
        return run.cost_model.ops
    from pluto.decisions.ops.derive import build_child

    return extract_ops(build_child(run.cost_model.supernet.config, run.trail["architecture"]), run.input_shape)


def final_report(run) -> dict[str, Any]:
    """The verdict of a finished :class:`~pluto.optimizer.pipeline.Compression` run (its ``deploy`` stage done)."""
    final, task, cost_model, ctx, cfg = run.final, run.task, run.cost_model, run.ctx, run.cfg
    float_model, bits = float_and_bits(final)
    input_shape = run.input_shape
    ops = extract_ops(float_model, input_shape)
    result: dict[str, Any] = {**{k: float(v) for k, v in run.metrics.items()}, "params": float(total_params(ops)),
                              "macs": float(total_macs(ops))}
    if run.onnx_path is not None:
        result["onnx"] = str(run.onnx_path)
    table = cost_model.table
    metrics = sorted({c.metric for c in run.constraints} | ({"latency_ms"} if table is not None else set()))
    predicted = {}
    for m in metrics:
        if not needs_table(m) or (table is not None and m in table.metrics):
            try:
                predicted[m] = cost_model.of_model(float_model, m, bits)
            except TableError as exc:  # a table read for measurement only (e.g. SR ops it was not profiled for)
                if any(c.metric == m for c in run.constraints):
                    raise
                print(f"predicted {m}: n/a ({str(exc).split(';')[0]})")
    analytic = {m: v for m, v in predicted.items() if not needs_table(m)}  # exact counts: as good as measured
    results = verdicts(run.constraints, {**run.measured, **analytic}, predicted)
    uncompressed = run.uncompressed
    for v in results:
        v["uncompressed_predicted"] = uncompressed["predicted"].get(v["metric"])
        v["uncompressed_measured"] = uncompressed.get("measured", {}).get(v["metric"])
        v["uncompressed"] = v["uncompressed_measured"] if v["uncompressed_measured"] is not None \
            else v["uncompressed_predicted"]
        v["minimum_reachable"] = run.minimum.get(v["metric"])
        if v["measured"] is not None and needs_table(v["metric"]):
            v["measured_over_target"] = v["measured"] / v["target"]
            rounds = (run.info.get("measurement") or {}).get("over_target_rounds")
            if v["metric"] == "latency_ms" and rounds:  # measured beside the uncompressed model, round by round
                v["measured_over_target_rounds"] = rounds
    for m, v in predicted.items():
        result[f"predicted_{m}"] = v
    for m, v in run.measured.items():
        result[f"measured_{m}"] = v
    hold = constraints_hold(results)
    # 1 only when every constraint was measured (or is analytic) and holds: an unmeasured run is not a feasible one
    result["constraints_hold"] = float(hold is True)
    result["constraints_measured"] = float(hold is not None)
    score = result.get(task.metric, 0.0) if task.higher_is_better else -result.get(task.metric, 0.0)
    result["objective"] = score if hold else score - 100.0
    dense = run.dense_reference.get(task.metric)
    if dense is not None:
        result[f"dense_{task.metric}"] = float(dense)

    layers = _layer_table(float_model, input_shape, bits, run.trail, _original_ops(run))
    if len(layers):
        layers.to_csv(ctx.dir / "layers.csv", index=False)
        _plot_layers(layers, ctx.dir / "layers.png", f"{cfg.model.name}: widths and bits after compression")
    ctx.write_json("report.json", {
        "result": result, "constraints": results, "multipliers": run.objective.lambdas(),
        "decisions": run.trail, "table": table.metadata.get("name") if table else None,
        "measured_on": run.info.get("measured_on"), "measurement": run.info.get("measurement"),
        "table_on_this_machine": run.info.get("table"),
        "uncompressed": uncompressed, "dense_reference": run.dense_reference,
        "correction_history": run.correction.history, "stage_seconds": run.info["timing_s"],
    })
    ctx.logger.scalars({f"final/{task.metric}": result.get(task.metric, float("nan")),
                        **{f"final/predicted_{k}": v for k, v in predicted.items()},
                        **{f"final/measured_{k}": v for k, v in run.measured.items()}}, run.state.global_step)
    _print(result, results, layers, task.metric, dense)
    return result


def float_and_bits(final: nn.Module) -> tuple[nn.Module, dict[str, int]]:
    """A float copy of ``final`` and its per-layer bits (empty when it is not quantization-aware)."""
    from pluto.decisions.bits import bit_choices, strip_quantization

    if bit_choices(final):
        return strip_quantization(copy.deepcopy(final))
    return copy.deepcopy(final), {}


def export_final(final: nn.Module, input_shape, out_dir: Path) -> Path:
    """The deployable ONNX of the run: ``model_int8.onnx`` (QDQ) when quantized, else ``model_fp32.onnx``."""
    from pluto.cost.measure import deployable_onnx
    from pluto.decisions.bits import bit_choices

    name = "model_int8.onnx" if bit_choices(final) else "model_fp32.onnx"
    return deployable_onnx(final, input_shape, Path(out_dir) / name)


def _print(result: dict[str, Any], results: list[dict], layers: pd.DataFrame, metric: str,
           dense: float | None) -> None:
    print("\n== pluto compression report ==")
    ref = f" (dense reference {dense:.2f})" if dense is not None else ""
    print(f"{metric} {result.get(metric, float('nan')):.2f}{ref}  params {result['params']:.0f}  "
          f"MACs {result['macs']:.0f}")
    for precision in ("int8", "fp32"):
        if f"onnx_{precision}_{metric}" in result:
            print(f"  ONNX {precision} (onnxruntime): {metric} {result[f'onnx_{precision}_{metric}']:.2f}, max |output - "
                  f"PyTorch| {result[f'onnx_{precision}_max_abs_diff']:.2g}")
    for v in results:
        measured = "n/a" if v["measured"] is None else f"{v['measured']:.4g}"
        predicted = "n/a" if v["predicted"] is None else f"{v['predicted']:.4g}"
        dense_cost = "" if v.get("uncompressed_measured") is None else \
            f" (uncompressed measured {v['uncompressed_measured']:.4g})"
        status = {True: "HOLDS", False: "VIOLATED", None: "NOT MEASURED"}[v["holds"]]
        print(f"  {v['constraint']}: predicted {predicted}, measured {measured}{dense_cost} -> {status} ({v['basis']})")
        lo, hi = v.get("measured_over_target_rounds") or (None, None)
        if lo is not None and lo <= 1.0 <= hi:
            print(f"    its rounds read {lo:.2f}-{hi:.2f}x the target: within this machine's round-to-round noise, a "
                  f"re-measurement may read the other way (more rounds: hw.measure_rounds)")
    if len(layers):
        print(layers.to_string(index=False, max_rows=60))
