"""The whole-network calibration's signed per-group op terms (``per_op_group``): the fit recovers known coefficients
from network features, the refit stores them, and both pricing paths apply them alike (old fits without them keep
pricing as before)."""
from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from pluto.cost.expected import expected_cost
from pluto.cost.ops import extract_ops
from pluto.cost.profiler import fit_calibration
from pluto.cost.table import LatencyTable
from pluto.models import create_model

TABLE = Path(__file__).resolve().parents[2] / "latency_tables" / "cpu_ort_xeon_amx"
GROUPS = ("conv_kxk", "conv_1x1", "dwconv", "eltwise")


def _networks(truth, n, rng, noise=0.0):
    """Synthetic network features: entry sums, activation MB and unit counts per group; measured from ``truth``."""
    points = []
    for _ in range(n):
        counts = {g: rng.randint(1, 40) for g in GROUPS}
        parts = {g: counts[g] * rng.uniform(0.002, 0.05) for g in GROUPS}
        act = {g: counts[g] * rng.uniform(0.001, 0.02) for g in GROUPS}
        mb = rng.uniform(0.1, 5.0)
        value = (sum(truth["scales"][g] * parts[g] + truth["per_act_mb"][g] * act[g]
                     + truth["per_op_group"][g] * counts[g] for g in GROUPS)
                 + truth["per_mb"] * mb + truth["offset"])
        points.append((parts, mb, sum(counts.values()), value * (1 + rng.gauss(0, noise)), act, counts))
    return points


TRUTH = {"scales": {"conv_kxk": 1.2, "conv_1x1": 0.9, "dwconv": 1.1, "eltwise": 0.8},
         "per_act_mb": {"conv_kxk": 0.5, "conv_1x1": -0.3, "dwconv": 2.0, "eltwise": 0.2},
         "per_op_group": {"conv_kxk": 0.004, "conv_1x1": 0.002, "dwconv": -0.003, "eltwise": -0.001},
         "per_mb": 0.05, "offset": 0.02}


def test_refit_recovers_known_per_group_op_terms():
    points = _networks(TRUTH, 200, random.Random(0))
    fit = fit_calibration(points, prior=1e-6, per_op_groups=True)
    assert fit["per_op"] == 0.0  # replaced by the per-group terms
    for g in GROUPS:
        assert fit["scales"][g] == pytest.approx(TRUTH["scales"][g], rel=0.02), (g, fit["scales"])
        assert fit["per_op_group"][g] == pytest.approx(TRUTH["per_op_group"][g], abs=2e-4), (g, fit["per_op_group"])
        assert fit["per_act_mb"][g] == pytest.approx(TRUTH["per_act_mb"][g], abs=0.05), (g, fit["per_act_mb"])
    assert fit["per_mb"] == pytest.approx(TRUTH["per_mb"], rel=0.05)
    assert fit["mape_calibrated_pct"] < 0.5
    # without the counts, or by default (opt-in), the fit is the earlier model and cannot match as well
    old = fit_calibration([p[:5] for p in points], prior=1e-6, per_op_groups=True)
    assert "per_op_group" not in old and old["mape_calibrated_pct"] > fit["mape_calibrated_pct"]
    assert "per_op_group" not in fit_calibration(points, prior=1e-6)


def test_refit_with_noise_generalises_and_transfer_keeps_them():
    points = _networks(TRUTH, 120, random.Random(1), noise=0.02)
    fit = fit_calibration(points, prior=0.005, per_op_groups=True)
    held = _networks(TRUTH, 60, random.Random(2))
    pred = np.array([sum(fit["scales"][g] * p[g] + fit["per_act_mb"][g] * a[g] + fit["per_op_group"][g] * c[g]
                         for g in GROUPS) + fit["per_mb"] * mb + fit["offset"] for p, mb, _, _, a, c in held])
    meas = np.array([p[3] for p in held])
    assert np.mean(np.abs(pred / meas - 1) <= 0.10) >= 0.95
    # few-shot transfer: a group the new networks never run keeps the earlier fit's term
    few = _networks(TRUTH, 10, random.Random(3))
    for p in few:
        for part in (p[0], p[4], p[5]):
            part["eltwise"] = 0.0
    moved = fit_calibration(few, prior=0.3, prior_fit={**fit, "per_op_group": {**fit["per_op_group"], "eltwise": -0.002}})
    assert moved["per_op_group"]["eltwise"] == pytest.approx(-0.002, rel=0.01)


@pytest.fixture(scope="module")
def table():
    if not (TABLE / "metadata.json").exists():
        pytest.skip("cpu_ort_xeon_amx not shipped here")
    return LatencyTable.load(TABLE)


def test_per_group_op_terms_are_priced_alike_on_both_paths(table):
    with_terms = copy.deepcopy(table)
    fit = with_terms.metadata["calibration"]["fp32"]["latency_ms"]
    fit["per_op_group"] = {g: 0.001 * (i % 3 - 1) for i, g in enumerate(sorted(fit["scales"]))}
    ops = extract_ops(create_model("mobilenet_v2", 10, 1, 28), (1, 28, 28))
    value = with_terms.predict_ops(ops, "latency_ms", "fp32")
    parts = {g: float(v) for g, v in with_terms.summed(ops, "latency_ms", "fp32").items()}
    act, counts = with_terms.activations(ops), with_terms.counts(ops)
    assert sum(counts.values()) == len(ops)
    by_hand = sum(fit["scales"][g] * parts[g] + fit["per_act_mb"][g] * act[g] + fit["per_op_group"].get(g, 0.0)
                  * counts[g] for g in parts) + fit["per_mb"] * sum(o.params for o in ops) * 4 / 1e6 \
        + fit["per_op"] * len(ops) + fit["offset"]
    assert value == pytest.approx(max(by_hand, 0.1 * sum(parts.values())), rel=1e-9)
    assert float(expected_cost(with_terms, ops, "latency_ms")) == pytest.approx(value, rel=1e-9)


def test_fits_without_per_group_op_terms_price_as_before(table):
    old = copy.deepcopy(table)
    for cal in old.metadata["calibration"].values():
        cal["latency_ms"].pop("per_op_group", None)
    ops = extract_ops(create_model("small_cnn", 10, 1, 28), (1, 28, 28))
    fit = old.metadata["calibration"]["fp32"]["latency_ms"]
    parts = {g: float(v) for g, v in old.summed(ops, "latency_ms", "fp32").items()}
    act = old.activations(ops)
    by_hand = sum(fit["scales"][g] * parts[g] + fit["per_act_mb"][g] * act[g] for g in parts) \
        + fit["per_mb"] * sum(o.params for o in ops) * 4 / 1e6 + fit["per_op"] * len(ops) + fit["offset"]
    assert old.predict_ops(ops, "latency_ms", "fp32") == pytest.approx(by_hand, rel=1e-9)
    assert old.calibration_coefficients("latency_ms", "fp32", list(parts))["per_op_group"] is None
    assert float(expected_cost(old, ops, "latency_ms")) == pytest.approx(by_hand, rel=1e-9)
    with torch.no_grad():
        assert float(old.calibrate(parts, "latency_ms", "fp32", 0.0, 0.0, act, {"conv_kxk": 5})) == \
            pytest.approx(float(old.calibrate(parts, "latency_ms", "fp32", 0.0, 0.0, act)))
