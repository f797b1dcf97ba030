"""``LatencyTable``: per-op latency/energy measured on one chip + runtime, validated on load.

On disk a table is a folder with two files (no pickle anywhere):

- ``entries.csv``: one row per measured unit, columns ``KEY_COLUMNS`` + ``VALUE_COLUMNS``.
  ``latency_ms`` is the median time of one batch's unit in milliseconds after the runtime's fixed
  per-call overhead is subtracted; ``latency_iqr_ms`` its interquartile range; ``energy_mj`` the
  energy of one run of the unit in millijoules (empty where the chip has no meter).
- ``metadata.json``: schema version, device, runtime and versions, threads, batch, date, the
  measuring method, the command that made it, the whole-network calibration and a SHA-256 of
  ``entries.csv`` (so a truncated or edited table is caught).

Lookups of shapes that were not measured interpolate over channels (differentiably, see
``pluto.cost.interp``) and over resolution (linearly in pixel count). ``predict`` sums a concrete
model's ops and applies the table's calibration ``scale * sum + offset``, fitted at profile time
on whole networks so fusion and per-call overhead the unit sum misses are accounted for.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from pluto.cost.interp import interp1d, interp2d, monotone
from pluto.cost.metadata import check_entry_text, metadata_digest, validate_entries, validate_metadata
from pluto.cost.metrics import TABLE_METRICS as METRICS  # metrics a table can hold
from pluto.cost.ops import MATRIX_KINDS, OpSpec, extract_ops
from pluto.errors import TableError

SCHEMA_VERSION = 1
KEY_COLUMNS = ("precision", "kind", "kernel", "stride", "hw", "act", "bn", "variant", "cin", "cout")
VALUE_COLUMNS = ("latency_ms", "latency_iqr_ms", "energy_mj", "n_samples")
ENTRIES, METADATA = "entries.csv", "metadata.json"
REQUIRED_METADATA = ("schema_version", "device", "runtime", "precisions", "metrics", "batch", "threads",
                     "created", "command", "method")
_DTYPES = {"precision": str, "kind": str, "act": str, "variant": str, "kernel": int, "stride": int, "hw": int,
           "cin": int, "cout": int, "bn": bool, "n_samples": int}


def entry_key(op: OpSpec, precision: str) -> tuple:
    """The table row key of ``op`` at its nominal channels. A grouped conv has its own entries, variant ``g<groups>``
    with ``cin`` per group (tables made before those existed price it as the dense conv of the same MACs)."""
    grouped = op.kind == "conv" and op.groups > 1
    cin = op.cin // op.groups if op.kind == "conv" else op.cin
    variant = f"g{op.groups}" if grouped else op.variant
    return (precision, op.kind, op.kernel, op.stride, op.hw, op.act, bool(op.bn), variant, cin, op.cout)


def op_of_key(key) -> tuple[str, OpSpec]:
    """(precision, the unit's :class:`OpSpec`) of a table row key (:func:`entry_key`'s inverse; strings as a CSV reads
    them are accepted): what re-timing an existing entry builds."""
    precision, kind, kernel, stride, hw, act, bn, variant, cin, cout = key
    variant = "" if variant is None or (isinstance(variant, float) and np.isnan(variant)) else str(variant)
    cin, cout = int(cin), int(cout)
    groups = cout if kind == "dwconv" else 1
    if kind == "conv" and variant.startswith("g") and variant[1:].isdigit():
        groups, variant, cin = int(variant[1:]), "", cin * int(variant[1:])
    bn = bn if isinstance(bn, bool) else str(bn) == "True"
    return str(precision), OpSpec(str(kind), f"entry_{kind}", cin, cout, int(kernel), int(stride), groups, int(hw),
                                  str(act), bn, variant)


BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}


def weight_bytes(ops: list[OpSpec], precision: str) -> float:
    """Bytes of weights the ops read per inference at ``precision`` (BN folded)."""
    return float(sum(op.params for op in ops) * BYTES_PER_WEIGHT[precision])


def activation_mb(op: OpSpec, cin: Tensor | float | None = None, cout: Tensor | float | None = None) -> Tensor | float:
    """Megabytes of activations ``op`` reads and writes (fp32 words; a fit is per precision, so the word size
    is absorbed by its coefficient), differentiable in (expected) ``cin``/``cout``.

    Why: an op timed alone converts its input to the runtime's blocked layout and back (oneDNN/MLAS NCHWc
    reorders) and streams activations from a cold cache; inside a network, neighbours of the same layout
    skip the reorders. Both effects scale with the activation bytes of the op's group, which is what the
    calibration's signed ``per_act_mb`` terms weigh."""
    cin = op.cin if cin is None else cin
    cout = op.cout if cout is None else cout
    return (cin * op.hw + cout * op.hw_out) * 4.0 / 1e6


CALIBRATION_GROUPS = ("conv_kxk", "conv_1x1", "dwconv", "other")


def calibration_group(op: OpSpec, fine: bool = False) -> str:
    """The group whose whole-network scale applies to ``op``: dense kxk conv, 1x1 conv, depthwise, the rest.

    ``fine`` (tables profiled since 2026-12: metadata ``calibration_groups: fine``) splits the rest into
    linear layers, elementwise ops (add, mul, act, bn), pooling, and data movement (concat, split, shuffle):
    they differ most between an op timed alone and the same op inside a network."""
    if op.kind == "conv":
        return "conv_kxk" if op.kernel > 1 else "conv_1x1"
    if op.kind == "dwconv":
        return "dwconv"
    if not fine:
        return "other"
    return {"linear": "linear", "pool": "pool", "gap": "pool", "concat": "movement", "split": "movement",
            "shuffle": "movement"}.get(op.kind, "eltwise")


FINE_PARENTS = {"linear": "other", "eltwise": "other", "pool": "other", "movement": "other"}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_entries(path: Path) -> pd.DataFrame:
    """Read an entries CSV with the schema's dtypes; TableError if it is not one."""
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values={"energy_mj": [""], "latency_iqr_ms": [""]})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise TableError(f"{path} is corrupt ({exc}); delete the table and re-run `pluto profile`.") from exc
    missing = [c for c in (*KEY_COLUMNS, *VALUE_COLUMNS) if c not in frame.columns]
    if missing:
        raise TableError(f"{path} lacks columns {missing}: it is not a pluto table of schema {SCHEMA_VERSION}; "
                         "re-run `pluto profile` to make one.")
    try:
        frame["bn"] = frame["bn"].map(lambda v: str(v).strip().lower() in ("true", "1"))
        frame = frame.astype({k: v for k, v in _DTYPES.items() if k != "bn"})
        frame["latency_ms"] = pd.to_numeric(frame["latency_ms"])
        frame["energy_mj"] = pd.to_numeric(frame["energy_mj"])
        frame["latency_iqr_ms"] = pd.to_numeric(frame["latency_iqr_ms"])
    except (ValueError, TypeError) as exc:
        raise TableError(f"{path} has malformed values ({exc}); it is truncated or edited. Delete it and re-run "
                         "`pluto profile` (profiling resumes from the intact rows).") from exc
    return frame


class LatencyTable:
    """Measured per-op costs of one device + runtime, for several precisions and metrics."""

    def __init__(self, entries: pd.DataFrame, metadata: dict):
        self.entries = entries.reset_index(drop=True)
        self.metadata = metadata
        self._grids: dict[tuple, tuple] = {}
        self._by_key: dict[tuple, dict[tuple, list[int]]] = {}
        self.path: Path | None = None

    # ---- identity -------------------------------------------------------------------------
    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(self.metadata["metrics"])

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(self.metadata["precisions"])

    @property
    def device(self) -> dict:
        return self.metadata["device"]

    @property
    def runtime(self) -> str:
        return self.metadata["runtime"]["name"]

    def __repr__(self) -> str:
        return (f"LatencyTable({self.metadata.get('name', '?')}: {self.device.get('name')} / {self.runtime}, "
                f"precisions={self.precisions}, metrics={self.metrics}, {len(self.entries)} entries)")

    # ---- disk -----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, expect_device: str | None = None, expect_runtime: str | None = None,
             allow_incomplete: bool = False) -> "LatencyTable":
        """Read and validate a table folder (or its metadata.json); TableError names any problem and the fix.

        ``expect_device``: 'cpu'/'cuda' or a substring of the chip name the caller needs the table for.
        """
        path = Path(path)
        folder = path.parent if path.name in (ENTRIES, METADATA) else path
        meta_path, entries_path = folder / METADATA, folder / ENTRIES
        if not meta_path.exists():
            raise TableError(f"no latency table at {folder} (missing {METADATA}); make one with `pluto profile --out "
                             f"{folder}` or use a shipped one from latency_tables/.")
        try:
            metadata = json.loads(meta_path.read_text())
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            raise TableError(f"{meta_path} is corrupt ({exc}); restore it from git or re-run `pluto profile`.") from exc
        validate_metadata(metadata, meta_path)  # types, ranges and metadata_sha256 of what predictions read
        version = metadata.get("schema_version")
        if version != SCHEMA_VERSION:
            raise TableError(f"{folder} has table schema version {version!r} but this pluto reads version "
                             f"{SCHEMA_VERSION}; re-profile it with this pluto's `pluto profile`.")
        missing = [k for k in REQUIRED_METADATA if k not in metadata]
        if missing:
            raise TableError(f"{meta_path} lacks {missing}; it was not written by `pluto profile`. Re-run it.")
        if not entries_path.exists():
            raise TableError(f"{folder} has metadata but no {ENTRIES}; re-run the command that made it: "
                             f"{metadata.get('command')}")
        if not metadata.get("complete", False) and not allow_incomplete:
            raise TableError(f"{folder} is incomplete: profiling stopped before the end. Resume it by re-running "
                             f"the same command (measured entries are kept): {metadata.get('command')}")
        if metadata.get("complete") and metadata.get("sha256") != file_sha256(entries_path):
            raise TableError(f"{entries_path} does not match its checksum in {METADATA}: it was truncated or edited. "
                             f"Restore it from git or re-run: {metadata.get('command')}")
        check_entry_text(entries_path, tuple(k for k, v in _DTYPES.items() if v is int))
        entries = read_entries(entries_path)
        validate_entries(entries, entries_path, metadata)
        if metadata.get("complete") and len(entries) != metadata.get("n_entries"):
            raise TableError(f"{entries_path} has {len(entries)} rows, metadata says {metadata.get('n_entries')}; "
                             "restore the table or re-profile.")
        if len(entries) and (entries["latency_ms"].isna().any() or (entries["latency_ms"] < 0).any()):
            raise TableError(f"{entries_path} has missing or negative latencies; re-profile the table.")
        table = cls(entries, metadata)
        table.path = folder
        table.check_device(expect_device, expect_runtime)
        return table

    def check_device(self, expect_device: str | None = None, expect_runtime: str | None = None) -> None:
        """TableError if this table was measured on another device kind/chip or runtime than expected."""
        if expect_device:
            kind, name = self.device.get("type", ""), str(self.device.get("name", ""))
            if expect_device != kind and expect_device.lower() not in name.lower():
                raise TableError(f"table {self.metadata.get('name')} was measured on {kind} '{name}', not "
                                 f"'{expect_device}'; pick a table made on that device (or profile one there).")
        if expect_runtime and expect_runtime != self.runtime:
            raise TableError(f"table {self.metadata.get('name')} models runtime '{self.runtime}', not "
                             f"'{expect_runtime}'; pick a matching table.")

    def save(self, path: str | Path) -> None:
        """Write entries.csv + metadata.json (with row count and checksum) into folder ``path``."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        columns = [*KEY_COLUMNS, *VALUE_COLUMNS]
        self.entries[columns].to_csv(folder / ENTRIES, index=False, float_format="%.6g")
        self.metadata.update(schema_version=SCHEMA_VERSION, n_entries=len(self.entries), complete=True,
                             sha256=file_sha256(folder / ENTRIES))
        self.metadata["metadata_sha256"] = metadata_digest(self.metadata)
        (folder / METADATA).write_text(json.dumps(self.metadata, indent=2, sort_keys=True, default=str) + "\n")
        self.path = folder

    # ---- lookup ---------------------------------------------------------------------------
    def _require(self, metric: str, precision: str) -> None:
        if metric not in self.metrics:
            raise TableError(f"table {self.metadata.get('name')} has no '{metric}' (it has {list(self.metrics)}); "
                             + ("energy needs a table profiled with a meter (NVML on NVIDIA GPUs, RAPL) or an "
                                "external meter's readings added with `pluto table import`." if metric == "energy_mj"
                                else "use one of those metrics."))
        if precision not in self.precisions:
            raise TableError(f"table {self.metadata.get('name')} has no {precision} entries (it has "
                             f"{list(self.precisions)}); profile with --precision {precision} or choose another.")

    @property
    def align(self) -> int:
        """Channel multiple the runtime's fast kernels need (8 for ORT's NCHWc on x86); 1 if not profiled."""
        return int(self.metadata.get("align", 1))

    @property
    def near_align(self) -> int | None:
        """A smaller channel multiple whose kernels run close to the aligned ones (metadata ``near_align``, measured
        by :func:`pluto.cost.profiler.probe_near_align`), or None. On the AMX Xeon VM (ORT 1 thread, fp32,
        2026-12-07) a 3x3 conv on 100 channels ran 1.28x the one on 96 and a depthwise 1.05x, while on 97-99 or
        101-103 channels they ran 1.8-2.0x and 4.9-5.1x (``scripts/channel_residues.py``): a width that is a multiple
        of 4 reads the aligned grid (its own calibration group ``<group>_q``), any other width the unaligned one."""
        near = self.metadata.get("near_align")
        return int(near) if near and self.unaligned and int(near) < self.align else None

    @property
    def unaligned(self) -> bool:
        """Whether the table measured unaligned channel counts on their own grid (space ``unaligned: true``)."""
        return bool(self.metadata.get("unaligned", self.metadata.get("space", {}).get("unaligned", False)))

    def _near(self, v: int) -> bool:
        """Whether channel count ``v`` (not a multiple of ``align``) is a near-aligned one: a multiple of
        :attr:`near_align` at least ``align`` wide (narrower ones stay unaligned: no aligned grid point lies below)."""
        near = self.near_align
        return bool(near) and v >= self.align and v % near == 0

    def _row_class(self, kind: str, cin: int, cout: int) -> tuple[bool | str, ...]:
        """Grid class of a table row: aligned (True), unaligned (False), or near-aligned ('q': kept out of both grids,
        a near-aligned query reads the aligned grid and its calibration group's scale)."""
        if not self.unaligned:
            return ()
        a = self.align

        def cls(v: int) -> bool | str:
            return True if v % a == 0 else "q" if self._near(v) else False
        return (cls(cin), cls(cout)) if kind in MATRIX_KINDS else (cls(cout),)

    def _query_class(self, kind: str, cin: Tensor, cout: Tensor) -> tuple[bool, ...]:
        """Alignment class of a query: integer, fixed counts by residue; real-valued (expected) counts
        count as aligned, since the materializer rounds pruned widths to multiples of ``align``."""
        if not self.unaligned:
            return ()

        def aligned(x: Tensor) -> bool:
            if x.requires_grad:
                return True
            v = float(x)
            return v != round(v) or round(v) % self.align == 0 or self._near(round(v))
        return (aligned(cin), aligned(cout)) if kind in MATRIX_KINDS else (aligned(cout),)

    def _grid(self, key: tuple, metric: str, cls: tuple[bool, ...]) -> tuple[Tensor, Tensor, Tensor] | None:
        """(cin grid, cout grid, monotone values) for one key (entry_key without channels) and alignment class.

        A missing class falls back to the fully aligned grid (tables profiled without unaligned points)."""
        cache_key = (*key, metric, cls)
        if cache_key not in self._grids:
            if not self._by_key:
                for i, row in enumerate(self.entries[list(KEY_COLUMNS)].itertuples(index=False)):
                    row_cls = self._row_class(row.kind, row.cin, row.cout)
                    self._by_key.setdefault(tuple(row)[:-2], {}).setdefault(row_cls, []).append(i)
            classes = self._by_key.get(key)
            if not classes:
                return None
            rows = classes.get(cls) or classes.get(tuple(True for _ in cls)) or max(classes.values(), key=len)
            sub = self.entries.iloc[rows]
            if sub[metric].isna().any():
                raise TableError(f"table {self.metadata.get('name')} lacks {metric} for some {key[1]} entries; "
                                 "re-profile with the meter on, or import readings with `pluto table import`.")
            kind = key[1]
            index = "cin" if kind in MATRIX_KINDS else "cout"
            pivot = sub.pivot_table(index=index, columns="cout", values=metric, aggfunc="median") \
                if kind in MATRIX_KINDS else sub.groupby("cout")[metric].median().to_frame()
            if pivot.isna().any().any():
                raise TableError(f"table {self.metadata.get('name')} has an incomplete channel grid for {key}: "
                                 "resume or re-run the `pluto profile` command that made it.")
            values = torch.tensor(pivot.to_numpy(dtype=np.float64))
            grid_in = torch.tensor(pivot.index.to_numpy(dtype=np.float64))
            grid_out = torch.tensor(pivot.columns.to_numpy(dtype=np.float64)) if kind in MATRIX_KINDS else grid_in
            self._grids[cache_key] = (grid_in, grid_out, monotone(values))
        return self._grids[cache_key]

    def _at_hw(self, key: tuple, metric: str, cin: Tensor, cout: Tensor) -> Tensor | None:
        grid = self._grid(key, metric, self._query_class(key[1], cin, cout))
        if grid is None:
            return None
        grid_in, grid_out, values = grid
        if key[1] in MATRIX_KINDS:
            return interp2d(grid_in, grid_out, values, cin, cout)
        return interp1d(grid_in, values[:, 0], cout)

    def lookup(self, op: OpSpec, metric: str = "latency_ms", precision: str = "fp32",
               cin: Tensor | float | None = None, cout: Tensor | float | None = None) -> Tensor:
        """Uncalibrated cost of one op, differentiable in (expected) ``cin``/``cout`` (defaults: nominal)."""
        self._require(metric, precision)
        cin = torch.as_tensor(op.cin if cin is None else cin, dtype=torch.float64)
        cout = torch.as_tensor(op.cout if cout is None else cout, dtype=torch.float64)
        if op.kind == "conv" and op.groups > 1:
            cin = cin / op.groups  # grids of grouped convs (and their dense fallback) are per group
        terms = self.hw_terms(op, precision)
        if len(terms) == 1:
            coef, key = terms[0]
            value = self._at_hw(key, metric, cin, cout)
            return value if coef == 1.0 else value * coef
        (_, lo), (t, hi) = terms
        v_lo = self._at_hw(lo, metric, cin, cout)
        v_hi = self._at_hw(hi, metric, cin, cout)
        return v_lo + t * (v_hi - v_lo)

    def hw_terms(self, op: OpSpec, precision: str) -> list[tuple[float, tuple]]:
        """How ``op``'s cost reads the table's grids over resolution: ``[(1.0, key)]`` when its resolution was
        measured, ``[(1 - t, key_lo), (t, key_hi)]`` (linear in pixel count) between two measured ones, else
        ``[(pixels / near_pixels, key_near)]``; keys are :func:`entry_key` without the channels."""
        key = entry_key(op, precision)[:-2]
        if not self._by_key:
            self._grid(key, "latency_ms", ())
        if key[7] != op.variant and not self._hws_for(key):  # a grouped conv in a table without grouped entries:
            key = (*key[:7], op.variant)  # priced as the dense conv of the same MACs, as it was made
        if self._by_key.get(key):
            return [(1.0, key)]
        hws = sorted({k[4] for k in self._hws_for(key)})
        if not hws:
            raise TableError(
                f"table {self.metadata.get('name')} has no entry for {op.kind} k={op.kernel} s={op.stride} "
                f"act={op.act} bn={op.bn} {op.variant} at {precision} (op '{op.name}'); add a model with this op to "
                "the space config and re-profile (`pluto profile --space ...` resumes and adds it).")
        pixels = op.hw ** 2
        below = [h for h in hws if h < op.hw]
        above = [h for h in hws if h > op.hw]
        if below and above:
            lo, hi = below[-1], above[0]
            t = (pixels - lo ** 2) / (hi ** 2 - lo ** 2)
            return [(1.0 - t, (*key[:4], lo, *key[5:])), (t, (*key[:4], hi, *key[5:]))]
        near = below[-1] if below else above[0]
        return [(pixels / near ** 2, (*key[:4], near, *key[5:]))]

    def _hws_for(self, key: tuple) -> list[tuple]:
        if not self._by_key:
            self._grid(key, "latency_ms", ())
        return [k for k in self._by_key if k[:4] == key[:4] and k[5:] == key[5:]]

    def has_entry(self, op: OpSpec, precision: str) -> bool:
        """Whether ``op`` can be priced (measured at its resolution or at a neighbouring one)."""
        try:
            self.lookup(op, "latency_ms", precision)
            return True
        except TableError:
            return False

    # ---- calibration and whole models --------------------------------------------------------
    def calibrate(self, parts: dict[str, Tensor] | Tensor, metric: str, precision: str,
                  weight_bytes: Tensor | float = 0.0, n_ops: Tensor | float = 0.0,
                  act: dict[str, Tensor | float] | None = None,
                  counts: dict[str, Tensor | float] | None = None) -> Tensor:
        """Whole-network cost from its entry sums per calibration group (see ``calibration_group``):

        ``sum_g (scale_g * parts[g] + per_act_mb_g * act[g] + per_op_group_g * counts[g]) + per_mb * weight_bytes / 1e6
        + per_op * n_ops + offset``; identity if uncalibrated. ``n_ops`` is the number of units (expected number under
        op choice); ``act[g]``: the activation megabytes of group g's ops (:func:`activation_mb`); ``counts[g]``: the
        (expected) number of group g's units (fits without ``per_op_group`` ignore it).
        The per-group scales absorb fusion and layout effects that differ by op kind (e.g. dense
        kxk convs running from cold caches in a whole network); ``weight_bytes`` is the weight
        storage, the DRAM traffic that isolated unit timings (weights in cache) do not see; the signed
        ``per_act_mb`` terms take out the layout reorders a unit pays alone and a network does not (or add
        the traffic it pays); the signed ``per_op_group`` terms the per-call time an isolated unit of the group has
        and a network's does not (or the reverse). The result is floored at 10 % of the entry sum."""
        if not isinstance(parts, dict):
            parts = {"all": parts}
        total = sum(parts.values(), torch.zeros((), dtype=torch.float64))
        fit = self.calibration_coefficients(metric, precision, list(parts))
        if fit is None:
            return total
        if "all" in parts or not self._fit(metric, precision).get("scales"):
            value = total * fit["scale"]
        else:
            value = sum((part * scale for part, scale in zip(parts.values(), fit["scales"])),
                        torch.zeros((), dtype=torch.float64))
        per_act = fit["per_act"]
        if per_act is not None and act:
            value = value + sum((a * self._scale(self._fit(metric, precision)["per_act_mb"], group, {"scale": 0.0})
                                 for group, a in act.items()), torch.zeros((), dtype=torch.float64))
        if fit["per_op_group"] is not None and counts:
            per_count = self._fit(metric, precision)["per_op_group"]
            value = value + sum((n * self._scale(per_count, group, {"scale": 0.0}) for group, n in counts.items()),
                                torch.zeros((), dtype=torch.float64))
        value = value + fit["per_mb"] * weight_bytes / 1e6 + fit["per_op"] * n_ops + fit["offset"]
        floored = per_act is not None or fit["per_op_group"] is not None
        return torch.maximum(torch.as_tensor(value, dtype=torch.float64), 0.1 * total) if floored else value

    def calibrate_precisions(self, by_precision: dict[str, dict], metric: str, default: str,
                             edges: Tensor | float = 0.0, edge_mb: Tensor | float = 0.0) -> Tensor:
        """Whole-network cost of a model whose layers run at several precisions.

        Each precision's ops are calibrated by that precision's own fit (``by_precision[p]``: the keyword arguments
        ``parts``, ``weight_bytes``, ``n_ops``, ``act``, ``counts`` of :meth:`calibrate`), the network's fixed offset counted
        once (the ``default`` precision's), and every change of precision between consecutive layers is priced by
        :meth:`boundary_coefficients` (``edges``: expected number of changes, ``edge_mb``: expected activation
        megabytes crossing them). A model at one precision gets exactly :meth:`calibrate` of that precision (a
        network of fp32 layers is no longer priced with the int8 fit because int8 is the default: that put int8's
        weight-traffic coefficient on fp32 bytes, +31-57 % on ResNet-18 / MobileNetV2, 2026-12-07)."""
        value = torch.zeros((), dtype=torch.float64)
        for precision, kw in by_precision.items():
            parts = kw["parts"] if isinstance(kw["parts"], dict) else {"all": kw["parts"]}
            value = value + self.calibrate(parts, metric, precision, kw.get("weight_bytes", 0.0),
                                           kw.get("n_ops", 0.0), kw.get("act"), kw.get("counts"))
            fit = self._fit(metric, precision)
            value = value - (fit.get("offset", 0.0) if fit else 0.0)
        own = self._fit(metric, default)
        value = value + (own.get("offset", 0.0) if own else 0.0)
        per_edge, per_mb = self.boundary_coefficients(metric)
        return value + per_edge * edges + per_mb * edge_mb

    def boundary_coefficients(self, metric: str) -> tuple[float, float]:
        """(ms or mJ per precision change, per megabyte of activations crossing it) between consecutive layers of
        different precisions, fitted on mixed-precision networks (``metadata['calibration_boundary']``); (0, 0) for
        a table without them."""
        fit = (self.metadata.get("calibration_boundary") or {}).get(metric) or {}
        return float(fit.get("per_edge", 0.0)), float(fit.get("per_mb", 0.0))

    def _fit(self, metric: str, precision: str) -> dict:
        return self.metadata.get("calibration", {}).get(precision, {}).get(metric) or {}

    def calibration_coefficients(self, metric: str, precision: str, groups: list[str]) -> dict | None:
        """The whole-network fit of ``metric`` at ``precision`` (see :meth:`calibrate`) as per-group lists over
        ``groups`` (``scales``; ``per_act``, ``per_op_group``: None without those terms) and the scalars ``scale``, ``per_mb``,
        ``per_op``, ``offset``; None if the table is uncalibrated (the sum of the entries is the cost)."""
        fit = self._fit(metric, precision)
        if not fit:
            return None
        scales = fit.get("scales", {})
        per_act = fit.get("per_act_mb") or {}
        per_count = fit.get("per_op_group") or {}
        return {"scale": fit.get("scale", 1.0),
                "scales": [self._scale(scales, g, fit) if scales else fit.get("scale", 1.0) for g in groups],
                "per_act": [self._scale(per_act, g, {"scale": 0.0}) for g in groups] if per_act else None,
                "per_op_group": [self._scale(per_count, g, {"scale": 0.0}) for g in groups] if per_count else None,
                "per_mb": fit.get("per_mb", 0.0), "per_op": fit.get("per_op", 0.0), "offset": fit["offset"]}

    @staticmethod
    def _scale(scales: dict, group: str, fit: dict) -> float:
        """A group's scale; a group the fit has not seen takes its parent's ('conv_kxk_u' or 'conv_kxk_q' ->
        'conv_kxk', 'eltwise' -> 'other'), else the global scale."""
        for name in (group, group[:-2] if group.endswith(("_u", "_q")) else None, FINE_PARENTS.get(group)):
            if name and name in scales:
                return scales[name]
        return fit.get("scale", 1.0)

    def summed(self, ops: list[OpSpec], metric: str = "latency_ms", precision: str = "fp32") -> dict[str, Tensor]:
        """Uncalibrated entry sums of ``ops`` per calibration group."""
        parts: dict[str, Tensor] = {}
        for op in ops:
            group = self.group_of(op)
            parts[group] = parts.get(group, 0.0) + self.lookup(op, metric, precision)
        return parts

    def activations(self, ops: list[OpSpec]) -> dict[str, float]:
        """Activation megabytes of ``ops`` per calibration group (see :func:`activation_mb`)."""
        act: dict[str, float] = {}
        for op in ops:
            group = self.group_of(op)
            act[group] = act.get(group, 0.0) + float(activation_mb(op))
        return act

    def counts(self, ops: list[OpSpec]) -> dict[str, int]:
        """Number of ``ops`` per calibration group (the calibration's ``per_op_group`` terms weigh them)."""
        out: dict[str, int] = {}
        for op in ops:
            group = self.group_of(op)
            out[group] = out.get(group, 0) + 1
        return out

    def group_of(self, op: OpSpec, cin: Tensor | float | None = None, cout: Tensor | float | None = None) -> str:
        """Calibration group of ``op``; tables with unaligned grids split off ops on unaligned channels ('_u'),
        whose kernels behave differently in a whole network than alone."""
        fine = self.metadata.get("calibration_groups") == "fine"
        group = calibration_group(op, fine)
        if op.kind not in ("conv", "dwconv") or not (self.unaligned or (fine and self.align > 1)):
            return group
        if fine:  # aligned = every channel count is a multiple of `align` (inputs narrower than `align`: the stem)
            def ok(x, narrow_ok: bool, near_ok: bool) -> bool:
                x = torch.as_tensor(x)
                if x.requires_grad:
                    return True  # expected (real-valued) counts: the materializer snaps them to `align`
                v = float(x)
                c = round(v)
                return (v != c or (narrow_ok and v < self.align) or c % self.align == 0
                        or (near_ok and self._near(c)))
            c_in = (op.cin // op.groups if op.kind == "conv" else op.cin) if cin is None else cin
            c_out = op.cout if cout is None else cout
            for near_ok, suffix in ((False, ""), (True, "_q")):  # aligned; else near-aligned ('_q'); else '_u'
                if ok(c_out, False, near_ok) and (op.kind == "dwconv" or ok(c_in, True, near_ok)):
                    return group + suffix
            return f"{group}_u"
        cin = torch.as_tensor(op.cin // op.groups if op.kind == "conv" else op.cin if cin is None else cin)
        cout = torch.as_tensor(op.cout if cout is None else cout)
        aligned = all(self._query_class(op.kind if op.kind == "conv" else "dwconv", cin, cout))
        return group if aligned else f"{group}_u"

    def predict_ops(self, ops: list[OpSpec], metric: str = "latency_ms", precision: str = "fp32",
                    calibrated: bool = True) -> float:
        parts = self.summed(ops, metric, precision)
        if not calibrated:
            return float(sum(parts.values()))
        return float(self.calibrate(parts, metric, precision, weight_bytes(ops, precision), len(ops),
                                    self.activations(ops), self.counts(ops)))

    def predict(self, model: nn.Module, input_shape: tuple[int, ...], metric: str = "latency_ms",
                precision: str = "fp32", calibrated: bool = True) -> float:
        """Predicted cost of running ``model`` once (batch = the table's batch) in ms or mJ."""
        self._require(metric, precision)
        return self.predict_ops(extract_ops(model, input_shape), metric, precision, calibrated)
