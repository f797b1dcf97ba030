"""The joint search step (``Compression.search_step``, as ``scripts/overhead.py`` runs it) makes the host wait for
the device on no step, a logging step included (the loop reads its logged values after it), and launches a bounded
multiple of a plain step's kernels.

Counted with :class:`pluto.engine.probe.StepProbe` on the CPU (strict: every host read counts as the GPU sync it
would be), batch 8, table cpu_ort_xeon_amx, bits (4, 8), foreach optimizers; kernels per step (aten ops other
than views), joint / plain:

- before (2026-12, priced on the host): small_cnn 216 syncs, 15 tensors from Python data, 2645 / 119 kernels
  (22.2x; 22x with foreach updates); resnet18 930 syncs, 48 from Python data, 9651 / 375 kernels (25.7x).
- after (device-side pricing, no host syncs): 0 syncs, 0 from Python data; small_cnn 1126 / 71 kernels (15.9x),
  resnet18 3453 / 192 (18.0x). What remained was mostly QAT: ~110 kernels per quantized layer per step.
- after fused QAT nodes (one autograd node per LSQ quantizer call; a layer's weight candidates fake-quantized as
  one batch with BN folding and the mixture in one node) and one gather for all gate consumers: small_cnn
  818 / 71 (11.5x; gates 128, + QAT 498, + KD 554), resnet18 2259 / 192 (11.8x; gates 309, + QAT 1839, + KD 1973).
  QAT now costs ~55 kernels per quantized layer per step, about half of them on per-layer step / zero-point /
  BN-factor vectors (each a launch of its own).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pluto.engine.probe import StepProbe

REPO = Path(__file__).resolve().parents[2]
TABLE = REPO / "latency_tables" / "cpu_ort_xeon_amx"
BOUNDS = {"small_cnn": 12.5, "resnet18": 13.0}  # joint / plain kernels, measured above plus a margin


def _overhead():
    from tests.conftest import load_script

    return load_script("overhead", "evidence_overhead_steps")


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_joint_step_never_syncs_and_bounds_its_launches(name, tmp_path):
    if not (TABLE / "metadata.json").exists():
        pytest.skip("table cpu_ort_xeon_amx not shipped here")
    overhead = _overhead()
    from pluto.models import create_model

    torch.manual_seed(0)
    model = create_model(name, 10, 1, 28)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    counts = {}
    for variant, flags in (overhead.VARIANTS[0], overhead.VARIANTS[-1]):
        step = overhead.build_step(model, x, y, str(TABLE), (4, 8), torch.device("cpu"), tmp_path / variant[:5],
                                   **flags)
        step()  # first step: quantizers initialize from the batch, plans are built
        report = overhead.probe_steps(step, 3)
        assert report.n_syncs == 0, report.summary()
        assert report.from_python == 0, report.summary()
        counts[variant] = report.per_call()["kernels"]
        if flags["cost"]:  # a logging step's values (widths, bits) stay on the device too: the loop reads them
            while (step.state.global_step + 1) % step.log_every:  # when it logs, after the step (so a CUDA graph
                step()  # can capture a logging step: trainer.compile=step-graph)
            with StepProbe(strict=True) as logged:
                step()
            assert logged.report.n_syncs == 0, logged.report.summary()
    joint, plain = counts[overhead.VARIANTS[-1][0]], counts["plain"]
    assert joint / plain < BOUNDS[name], f"{name}: joint {joint:.0f} vs plain {plain:.0f} kernels per step"
