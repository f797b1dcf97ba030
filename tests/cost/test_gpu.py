"""CUDA-graph profiling with NVML energy; skipped cleanly where there is no GPU."""
import pytest
import torch

from pluto.cost.profiler import profile
from pluto.cost.space import ProfileSpace
from pluto.cost.table import LatencyTable

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_cudagraph_profile_with_energy(tmp_path):
    space = ProfileSpace.from_dict({"name": "micro", "channel_grid": [8, 16], "min_width": 0.5,
                                    "models": [{"name": "small_cnn", "input_shape": [1, 12, 12],
                                                "kwargs": {"width": 0.25}}],
                                    "calibration": {"mbconv": 0, "resnet": 0}})
    table = profile(space, tmp_path / "gpu", device="cuda", runtime="cudagraph", precisions=("fp32", "fp16"),
                    samples=5, energy_window_s=0.1, progress=False)
    loaded = LatencyTable.load(tmp_path / "gpu", expect_device="cuda")
    assert loaded.precisions == ("fp16", "fp32")
    assert (loaded.entries["latency_ms"] > 0).all()
    if "energy_mj" in loaded.metrics:
        assert (loaded.entries["energy_mj"] > 0).all()
