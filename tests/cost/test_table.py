import json

import pytest
import torch

from pluto.cost.ops import OpSpec, extract_ops
from pluto.cost.table import ENTRIES, METADATA, LatencyTable
from pluto.errors import TableError
from pluto.models import create_model

from conftest import make_table, synthetic_value


def test_round_trip_and_predict_matches_sum(tmp_path, table):
    table.save(tmp_path / "t")
    loaded = LatencyTable.load(tmp_path / "t")
    assert loaded.precisions == ("fp32", "int8") and loaded.metrics == ("latency_ms", "energy_mj")
    assert len(loaded.entries) == len(table.entries)
    model = create_model("small_cnn", width=0.5)
    ops = extract_ops(model, (1, 28, 28))
    expected = sum(synthetic_value(op, "fp32") for op in ops)
    assert loaded.predict(model, (1, 28, 28)) == pytest.approx(expected, rel=1e-4)
    assert loaded.predict(model, (1, 28, 28), precision="int8") == pytest.approx(expected / 2, rel=1e-4)
    assert loaded.predict(model, (1, 28, 28), metric="energy_mj") == pytest.approx(5 * expected, rel=1e-4)


def test_pruned_widths_interpolate_between_knots(table):
    model = create_model("small_cnn", width=0.4)  # 13/26/51 channels: not on the grid
    ops = extract_ops(model, (1, 28, 28))
    exact = sum(synthetic_value(op, "fp32") for op in ops)
    assert table.predict(model, (1, 28, 28)) == pytest.approx(exact, rel=0.15)


def test_calibration_applied(table):
    table.metadata["calibration"] = {"fp32": {"latency_ms": {"scale": 2.0, "offset": 0.5}}}
    model = create_model("small_cnn", width=0.5)
    raw = table.predict(model, (1, 28, 28), calibrated=False)
    assert table.predict(model, (1, 28, 28)) == pytest.approx(2 * raw + 0.5)


def test_unmeasured_resolution_interpolates_in_pixels(table):
    at14 = table.lookup(OpSpec("conv", "c", 16, 16, 3, 1, hw=14, act="relu", bn=True))
    at28 = table.lookup(OpSpec("conv", "c", 16, 16, 3, 1, hw=28, act="relu", bn=True))
    mid = table.lookup(OpSpec("conv", "c", 16, 16, 3, 1, hw=20, act="relu", bn=True))
    assert at14 < mid < at28


def test_missing_entry_and_metric_errors(tiny_space):
    table = make_table(tiny_space, precisions=("fp32",), energy=False)
    with pytest.raises(TableError, match="no entry for conv k=7"):
        table.lookup(OpSpec("conv", "big", 16, 16, kernel=7, hw=28))
    with pytest.raises(TableError, match="no 'energy_mj'.*import"):
        table.lookup(OpSpec("conv", "c", 16, 16, 3, hw=28, act="relu", bn=True), metric="energy_mj")
    with pytest.raises(TableError, match="no int8 entries"):
        table.lookup(OpSpec("conv", "c", 16, 16, 3, hw=28, act="relu", bn=True), precision="int8")


@pytest.fixture
def saved(tmp_path, table):
    table.save(tmp_path / "t")
    return tmp_path / "t"


def test_missing_table(tmp_path):
    with pytest.raises(TableError, match="no latency table.*pluto profile"):
        LatencyTable.load(tmp_path / "nope")


def test_corrupt_metadata(saved):
    (saved / METADATA).write_text("{not json")
    with pytest.raises(TableError, match="corrupt"):
        LatencyTable.load(saved)


def test_wrong_schema(saved):
    meta = json.loads((saved / METADATA).read_text())
    meta["schema_version"] = 99
    (saved / METADATA).write_text(json.dumps(meta))
    with pytest.raises(TableError, match="schema version 99"):
        LatencyTable.load(saved)


def test_truncated_entries(saved):
    text = (saved / ENTRIES).read_text()
    (saved / ENTRIES).write_text(text[: len(text) // 2])
    with pytest.raises(TableError, match="truncated or edited"):
        LatencyTable.load(saved)


def test_wrong_device_and_runtime(saved):
    with pytest.raises(TableError, match="measured on cpu"):
        LatencyTable.load(saved, expect_device="cuda")
    with pytest.raises(TableError, match="models runtime 'onnxruntime'"):
        LatencyTable.load(saved, expect_runtime="cudagraph")
    assert LatencyTable.load(saved, expect_device="Test CPU").device["name"] == "Test CPU"


def test_incomplete_table_refused(saved):
    meta = json.loads((saved / METADATA).read_text())
    meta["complete"] = False
    (saved / METADATA).write_text(json.dumps(meta))
    with pytest.raises(TableError, match="incomplete.*re-running"):
        LatencyTable.load(saved)


def test_alignment_classes(tiny_space):
    table = make_table(tiny_space, precisions=("fp32",))
    op = OpSpec("conv", "c", 16, 16, 3, hw=28, act="relu", bn=True)
    single_grid = float(table.lookup(op, cin=15, cout=15))
    # a table profiled with unaligned points keeps them on their own grid: make those 3x slower
    table = make_table(tiny_space.__class__.from_dict({**tiny_space.source, "unaligned": True, "align": 8}),
                       precisions=("fp32",))
    table.metadata.update(align=8, unaligned=True)
    slow = table.entries["cin"] % 8 != 0
    table.entries.loc[slow & (table.entries["kind"] == "conv"), "latency_ms"] *= 3
    unaligned = float(table.lookup(op, cin=15, cout=16))
    aligned = float(table.lookup(op, cin=16, cout=16))
    assert unaligned > 2 * aligned and single_grid < 1.5 * aligned
    grad_in = torch.tensor(15.0, requires_grad=True)  # expected (real) counts use the aligned grid
    value = table.lookup(op, cin=grad_in, cout=16)
    value.backward()
    assert grad_in.grad > 0 and float(value) < 1.5 * aligned


def test_near_aligned_widths_read_the_aligned_grid_and_their_own_calibration_group(tiny_space):
    """A table that measured a near-aligned multiple (near_align 4 under align 8): a width that is a multiple of 4 and
    at least 8 reads the aligned grid and prices in '<group>_q' (the parent's scale until a fit has its own); other
    widths, and multiples of 4 narrower than align, read the unaligned grid; rows at near-aligned widths belong to
    neither grid (with near_align unset they were unaligned rows)."""
    import pandas as pd

    table = make_table(tiny_space.__class__.from_dict({**tiny_space.source, "unaligned": True, "align": 8}),
                       precisions=("fp32",))
    table.metadata.update(align=8, unaligned=True, calibration_groups="fine")
    slow = table.entries["cin"] % 8 != 0
    table.entries.loc[slow & (table.entries["kind"] == "conv"), "latency_ms"] *= 3
    key = (table.entries["kind"] == "conv") & (table.entries["kernel"] == 3) & (table.entries["hw"] == 14)
    odd = table.entries[key & (table.entries["cin"] == 31)].assign(cin=20)  # rows at a near-aligned width, 100x
    odd["latency_ms"] *= 100
    table.entries = pd.concat([table.entries, odd], ignore_index=True)
    op = OpSpec("conv", "c", 16, 16, 3, hw=14, act="relu", bn=True)

    def price(t, cin):
        t._grids, t._by_key = {}, {}
        return float(t.lookup(op, cin=cin, cout=16))

    without = {c: price(table, c) for c in (12, 13, 19, 4)}
    assert table.group_of(OpSpec("conv", "c", 12, 16, 3, hw=14)) == "conv_kxk_u"
    table.metadata["near_align"] = 4
    near = {c: price(table, c) for c in (8, 12, 13, 16, 19, 4)}
    assert near[8] < near[12] < near[16] and near[12] < 1.5 * near[16]  # between the aligned neighbours
    assert near[13] > 2 * near[12] and near[13] == pytest.approx(without[13])  # 13: unaligned, as before
    assert without[19] > 1.3 * near[19]  # the near-aligned rows sat on the unaligned grid; now on neither
    assert near[4] == pytest.approx(without[4])  # narrower than align: stays unaligned
    groups = {c: table.group_of(OpSpec("conv", "c", c, 16, 3, hw=14)) for c in (12, 13, 16, 4)}
    assert groups == {12: "conv_kxk_q", 13: "conv_kxk_u", 16: "conv_kxk", 4: "conv_kxk"}  # 4 in: the stem rule
    assert table.group_of(OpSpec("conv", "c", 16, 20, 3, hw=14)) == "conv_kxk_q"
    assert table.group_of(OpSpec("conv", "c", 16, 18, 3, hw=14)) == "conv_kxk_u"
    table.metadata["calibration"] = {"fp32": {"latency_ms": {"scales": {"conv_kxk": 2.0, "conv_kxk_u": 3.0},
                                                             "offset": 0.0}}}
    fit = table.calibration_coefficients("latency_ms", "fp32", ["conv_kxk_q", "conv_kxk_u", "conv_kxk"])
    assert fit["scales"] == [2.0, 3.0, 2.0]
    table.metadata["align"] = 4  # a near multiple not below align means nothing
    assert table.near_align is None


def test_the_price_of_a_precision_change_is_checked_and_covered_by_the_digest(tmp_path, table):
    """``calibration_boundary`` moves every mixed-precision prediction: a negative price is refused by name, an
    edited one like an edited calibration offset."""
    table.metadata["calibration_boundary"] = {"latency_ms": {"per_edge": 0.004, "per_mb": 0.05}}
    table.save(tmp_path / "t")
    assert LatencyTable.load(tmp_path / "t").boundary_coefficients("latency_ms") == (0.004, 0.05)
    meta = json.loads((tmp_path / "t" / METADATA).read_text())
    meta["calibration_boundary"]["latency_ms"]["per_edge"] = 0.001
    (tmp_path / "t" / METADATA).write_text(json.dumps(meta))
    with pytest.raises(TableError, match="metadata_sha256"):
        LatencyTable.load(tmp_path / "t")
    meta["calibration_boundary"]["latency_ms"]["per_edge"] = -0.001
    (tmp_path / "t" / METADATA).write_text(json.dumps(meta))
    with pytest.raises(TableError, match="calibration_boundary.latency_ms.per_edge"):
        LatencyTable.load(tmp_path / "t")


def test_grouped_convs_have_entries_of_their_own_and_older_tables_fall_back_to_dense_ones():
    """onnxruntime runs a grouped conv 2-3x slower than the dense conv of the same MACs (RegNet in context, 2026-12-07):
    the profiling space emits grouped units (groups kept, cin per group on the grid) keyed ``g<groups>``, lookups
    read them, and a table made before they existed still prices the op as the dense conv of the same MACs."""
    import pandas as pd

    from pluto.cost.profiler import COLUMNS
    from pluto.cost.space import ProfileSpace
    from pluto.cost.table import SCHEMA_VERSION, entry_key

    space = ProfileSpace.from_dict({"name": "g", "channel_grid": [16, 32, 64, 128, 256, 512], "min_width": 0.25,
                                    "models": [{"name": "regnet_x_400mf", "input_shape": [1, 28, 28]}]})
    grouped = [op for op in space.unit_ops() if op.kind == "conv" and op.groups > 1]
    assert grouped and all(op.cout % op.groups == 0 and op.cin % op.groups == 0 for op in grouped)
    assert {entry_key(op, "fp32")[7] for op in grouped} == {f"g{g}" for g in {op.groups for op in grouped}}

    op = OpSpec("conv", "g", 64, 64, 3, 1, groups=4, hw=7, act="relu", bn=True)
    assert entry_key(op, "fp32")[7:] == ("g4", 16, 64)
    rows = []
    for variant, ms in (("g4", 0.03), ("", 0.01)):  # grouped 3x the dense conv of the same MACs
        for cin in (8, 16):
            for cout in (32, 64):
                rows.append(["fp32", "conv", 3, 1, 7, "relu", True, variant, cin, cout, ms * cin * cout / 1024, 0.0,
                             None, 30])
    meta = {"schema_version": SCHEMA_VERSION, "name": "t", "device": {"type": "cpu", "name": "Test CPU"},
            "runtime": {"name": "onnxruntime"}, "precisions": ["fp32"], "metrics": ["latency_ms"], "batch": 1,
            "threads": 1, "created": "2026-01-01", "command": "synthetic", "method": {}, "align": 1, "space": {}}
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    assert float(LatencyTable(frame, meta).lookup(op)) == pytest.approx(0.03)
    older = LatencyTable(frame[frame["variant"] != "g4"].reset_index(drop=True), meta)
    assert float(older.lookup(op)) == pytest.approx(0.01)


def test_op_of_key_inverts_entry_key_for_every_kind_the_zoo_profiles():
    from pluto.cost.space import ProfileSpace
    from pluto.cost.table import entry_key, op_of_key

    space = ProfileSpace.load("configs/space/cpu_zoo.yaml")
    ops = space.unit_ops()
    kinds = {op.kind for op in ops}
    assert {"conv", "dwconv", "add", "linear"} <= kinds and any(op.kind == "conv" and op.groups > 1 for op in ops)
    for op in ops:
        key = entry_key(op, "int8")
        assert entry_key(op_of_key(key)[1], "int8") == key
        as_csv = tuple(str(v) for v in key)  # how a resumed profile reads its rows
        assert tuple(map(str, entry_key(op_of_key(as_csv)[1], "int8"))) == as_csv


def test_adaptation_sets_the_level_alone_from_sparse_references_and_refits_from_dense_ones(table):
    """refit_to: references spread one per (family, input shape) set the table's level alone (every coefficient times
    the median measured / predicted ratio, so each is predicted 1.25x); two or more per pair refit the terms pulled
    towards that levelled fit; 'level' forces the first. The choice is recorded in the fit."""
    import copy

    from pluto.cost.adapt import refit_to

    table.metadata["calibration"] = {"fp32": {"latency_ms": {"scales": {}, "scale": 1.0, "per_mb": 0.01,
                                                             "per_op": 0.002, "offset": 0.01}}}
    nets = [(f"net{w}", "small_cnn", create_model("small_cnn", width=w).eval(), (1, 28, 28)) for w in (0.25, 0.5, 0.75)]
    before = [table.predict(m, s) for _, _, m, s in nets]
    sparse = [(label, f"family{i}", m, s) for i, (label, _, m, s) in enumerate(nets)]  # one per pair
    sparse_table = copy.deepcopy(table)
    fit = refit_to(sparse_table, "fp32", sparse, [1.25 * b for b in before])
    assert fit["adaptation"]["chosen"] == "level only" and fit["level"] == pytest.approx(1.25)
    assert [sparse_table.predict(m, s) for _, _, m, s in nets] == pytest.approx([1.25 * b for b in before])
    dense_table = copy.deepcopy(table)
    fit = refit_to(dense_table, "fp32", nets, [1.25 * b for b in before])  # 3 networks of one pair
    assert fit["adaptation"]["chosen"] == "refit, prior 0.3" and fit["adaptation"]["family_shapes"] == 1
    assert refit_to(copy.deepcopy(table), "fp32", nets, before, prior="level")["adaptation"]["chosen"] == "level only"
    # a second adaptation starts from the fit, not from the record of the first
    again = refit_to(dense_table, "fp32", nets, [1.25 * b for b in before])
    assert again["adaptation"]["references"] == 3 and "adaptation" not in again["adaptation"]
