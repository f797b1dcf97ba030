"""The measured precision polish (``polish_precision``): after hardening, layers the search left in fp32 move to int8
when the chip measures the whole model faster that way — all of them, or all but the first layer — and stay as
searched when neither trial beats the searched pattern by the margin."""
from __future__ import annotations

import pytest
import torch

from pluto.decisions.bits import bit_choices, harden_bits
from pluto.models import create_model
from pluto.optimizer.constraints import Constraint
from pluto.optimizer.decisions import attach, build_concrete, polish_precision

ISLANDS = ("stem.0", "layers.3.shortcut.0", "layers.6.shortcut.0", "fc")


@pytest.fixture
def searched():
    """A ResNet-20 hardened the way the v2 joint runs ended: int8 everywhere except an fp32 stem, fp32 downsampling shortcuts
    and an fp32 classifier."""
    torch.manual_seed(0)
    d = attach(create_model("resnet20", 10, 1, 28), torch.zeros(1, 1, 28, 28), False, True, (8, 32))
    names = list(bit_choices(d.model))
    assert names[0] == "stem.0" and set(ISLANDS) <= set(names)
    harden_bits(d.model, {n: 32 if n in ISLANDS else 8 for n in names})
    return d


def _chip(d, costs: dict[frozenset, float]):
    """``build`` and ``measure_models`` of a chip whose latency depends on which islands run in fp32 (a "model" here
    is the set of fp32 layers it was built with); counts the models measured together per call."""
    calls = []

    def build() -> frozenset:
        return frozenset(n for n, c in bit_choices(d.model).items() if c.chosen_bits == 32)

    def measure_models(models: list[frozenset]) -> list[dict[str, float]]:
        calls.append(len(models))
        return [{"latency_ms": costs[m]} for m in models]
    return build, measure_models, calls


LATENCY = [Constraint("latency_ms", "latency_ms", 0.2)]


def test_the_islands_move_to_int8_when_the_chip_measures_it_faster(searched):
    costs = {frozenset(ISLANDS): 0.20, frozenset(): 0.17, frozenset({"stem.0"}): 0.18}
    build, measure, calls = _chip(searched, costs)
    notes = polish_precision(searched, LATENCY, build, measure)
    assert notes["chosen"] == "all integer" and notes["measured_gain"] == pytest.approx(0.15)
    assert set(notes["layers"]) == set(ISLANDS) and len(notes["measurements"]) == 3 and calls == [3]  # together
    assert all(c.chosen_bits == 8 for c in bit_choices(searched.model).values())
    model, trail = build_concrete(searched, torch.zeros(1, 1, 28, 28))  # the concrete model runs what was measured
    assert set(trail["bits"].values()) == {8}


def test_the_first_layer_stays_float_when_only_that_pattern_is_faster(searched):
    build, measure, _ = _chip(searched, {frozenset(ISLANDS): 0.20, frozenset(): 0.21, frozenset({"stem.0"}): 0.17})
    notes = polish_precision(searched, LATENCY, build, measure)
    assert notes["chosen"] == "all integer except the first layer" and "stem.0" not in notes["layers"]
    assert {n for n, c in bit_choices(searched.model).items() if c.chosen_bits == 32} == {"stem.0"}


def test_the_searched_pattern_stays_when_no_trial_beats_it_by_the_margin(searched):
    build, measure, _ = _chip(searched, {frozenset(ISLANDS): 0.20, frozenset(): 0.197, frozenset({"stem.0"}): 0.25})
    notes = polish_precision(searched, LATENCY, build, measure, margin=0.03)
    assert notes["chosen"] == "as searched" and "layers" not in notes
    assert {n for n, c in bit_choices(searched.model).items() if c.chosen_bits == 32} == set(ISLANDS)


def test_nothing_is_measured_without_a_measured_constraint_or_anything_to_try(searched):
    build, measure, calls = _chip(searched, {})
    assert "skipped" in polish_precision(searched, [Constraint("macs", "macs", 1e6)], build, measure)
    torch.manual_seed(0)  # integer candidates only: nothing cheaper than int8 (never int4), no float first layer
    d = attach(create_model("resnet20", 10, 1, 28), torch.zeros(1, 1, 28, 28), False, True, (4, 8))
    harden_bits(d.model, {n: 8 for n in bit_choices(d.model)})
    assert "skipped" in polish_precision(d, LATENCY, build, measure) and not calls


def test_an_integer_first_layer_is_tried_in_float_when_the_search_made_every_layer_integer(searched):
    """v5's searches made every ResNet-20 layer int8, stem included, which the v4 measurements found slow: with no
    float layer left, the polish still tries the first layer at fp32 and keeps it where the chip says so."""
    harden_bits(searched.model, {n: 8 for n in bit_choices(searched.model)})
    build, measure, calls = _chip(searched, {frozenset(): 0.20, frozenset({"stem.0"}): 0.18})
    notes = polish_precision(searched, LATENCY, build, measure)
    assert calls == [2] and notes["chosen"] == "all integer, the first layer fp32"
    assert notes["layers"] == {"stem.0": "8 -> 32"} and notes["measured_gain"] == pytest.approx(0.1)
    assert {n for n, c in bit_choices(searched.model).items() if c.chosen_bits == 32} == {"stem.0"}
    harden_bits(searched.model, {n: 8 for n in bit_choices(searched.model)})
    build, measure, _ = _chip(searched, {frozenset(): 0.20, frozenset({"stem.0"}): 0.199})
    assert polish_precision(searched, LATENCY, build, measure)["chosen"] == "as searched"
    assert all(c.chosen_bits == 8 for c in bit_choices(searched.model).values())


def test_a_gpu_search_moves_its_fp32_layers_to_fp16_and_never_to_int4():
    """Candidates (16, 32): the polish tries fp16 for the fp32 layers; candidates (4, 32): nothing to try (int4's
    accuracy cost is not the chip's to weigh)."""
    torch.manual_seed(0)
    d = attach(create_model("resnet20", 10, 1, 28), torch.zeros(1, 1, 28, 28), False, True, (16, 32))
    names = list(bit_choices(d.model))
    harden_bits(d.model, {n: 32 if n in ISLANDS else 16 for n in names})

    def build() -> frozenset:
        return frozenset(n for n, c in bit_choices(d.model).items() if c.chosen_bits == 32)

    costs = {frozenset(ISLANDS): 0.20, frozenset(): 0.15, frozenset({"stem.0"}): 0.18}
    notes = polish_precision(d, LATENCY, build, lambda models: [{"latency_ms": costs[m]} for m in models])
    assert notes["chosen"] == "all fp16" and set(notes["layers"].values()) == {"32 -> 16"}
    assert all(c.chosen_bits == 16 for c in bit_choices(d.model).values())
    d4 = attach(create_model("resnet20", 10, 1, 28), torch.zeros(1, 1, 28, 28), False, True, (4, 32))
    harden_bits(d4.model, {n: 32 for n in bit_choices(d4.model)})
    assert "skipped" in polish_precision(d4, LATENCY, build, lambda models: [])


def test_a_quantized_run_polishes_before_and_after_the_landing(tmp_path):
    """End to end through the pipeline with a board that charges by ONNX file size: the polish measures its patterns
    together before the landing and again after it (the landing changes widths and blocks, so what is fastest can
    change), both recorded in decisions.json, and the deployed bits are the ones the polish measured fastest."""
    import json

    from pluto.train import compose, run
    from tests.optimizer.test_chip_in_loop import _board

    run(compose(["recipe=smoke_compress", "logger=none", "trainer.threads=1", "compress.distill=false",
                 "compress.quantize=true", "compress.bits=[8,32]", "hw=cpu_ort_int8",
                 f"hw.runner='{_board(tmp_path, 1.0)}'", "constraints.macs=null", "constraints.latency_ms=0.8x"]),
        run_dir=tmp_path / "run")
    decisions = json.loads((tmp_path / "run" / "decisions.json").read_text())
    before, after = decisions["precision_polish"], decisions["precision_polish_after_landing"]
    for notes in (before, after):
        assert "skipped" in notes or (notes["measurements"][0]["trial"] == "as searched"
                                      and len(notes["measurements"]) in (2, 3))
    moved = {**before.get("layers", {}), **after.get("layers", {})}  # what the board measured faster ships
    assert all(decisions["bits"][name] == int(change.split("-> ")[1]) for name, change in moved.items())
    if not moved:  # this board charges the QDQ export's extra nodes: the searched bits ship unchanged
        assert before["chosen"] == after["chosen"] == "as searched"
        assert any(bits == 32 for bits in decisions["bits"].values())
