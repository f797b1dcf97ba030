"""A real (seconds-long) profile on this CPU: entries, resume after a stop, calibration, sealed table."""
import json

import pytest
import torch

from pluto.cost.profiler import profile
from pluto.cost.space import ProfileSpace
from pluto.cost.table import ENTRIES, METADATA, LatencyTable
from pluto.errors import ConfigError, TableError
from pluto.models import create_model

SPACE = {"name": "micro", "channel_grid": [4, 8, 16], "min_width": 0.5,
         "models": [{"name": "small_cnn", "input_shape": [1, 12, 12], "kwargs": {"width": 0.25}}],
         "calibration": {"mbconv": 0, "resnet": 0, "models": True}}
FAST = dict(samples=5, min_sample_s=0.0002, progress=False, energy="none")


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_profile_resume_and_predict(tmp_path, runtime):
    space = ProfileSpace.from_dict(SPACE)
    out = tmp_path / runtime
    partial = profile(space, out, runtime=runtime, limit=3, **FAST)
    assert not partial.metadata["complete"] and len(partial.entries) == 3
    with pytest.raises(TableError, match="incomplete"):
        LatencyTable.load(out)
    table = profile(space, out, runtime=runtime, **FAST)  # resumes: the 3 entries are kept, not re-measured
    n_ops = len(space.unit_ops())
    assert len(table.entries) == n_ops and table.metadata["complete"]
    loaded = LatencyTable.load(out)
    meta = json.loads((out / METADATA).read_text())
    assert meta["device"]["type"] == "cpu" and meta["runtime"]["name"] == runtime and meta["threads"] == 1
    assert meta["command"] and meta["method"]["samples"] == 5
    assert "latency_ms" in meta["calibration"]["fp32"]
    assert (loaded.entries["latency_ms"] > 0).all()
    model = create_model("small_cnn", width=0.25, input_size=12)
    assert loaded.predict(model, (1, 12, 12)) > 0


def test_resume_refuses_other_settings(tmp_path):
    space = ProfileSpace.from_dict(SPACE)
    profile(space, tmp_path / "t", runtime="torch", limit=1, **FAST)
    with pytest.raises(TableError, match="runtime"):
        profile(space, tmp_path / "t", runtime="onnxruntime", limit=1, **FAST)


def test_torn_last_line_is_dropped_on_resume(tmp_path):
    space = ProfileSpace.from_dict(SPACE)
    out = tmp_path / "t"
    profile(space, out, runtime="torch", limit=2, **FAST)
    with open(out / ENTRIES, "a") as f:
        f.write("fp32,conv,3,1,12,re")  # a kill in the middle of a write
    table = profile(space, out, runtime="torch", **FAST)
    assert len(table.entries) == len(space.unit_ops())


def test_bad_settings_are_config_errors(tmp_path):
    space = ProfileSpace.from_dict(SPACE)
    with pytest.raises(ConfigError, match="int8"):
        profile(space, tmp_path / "t", runtime="torch", precisions=("int8",), **FAST)
    with pytest.raises(ConfigError, match="cudagraph needs --device cuda"):
        profile(space, tmp_path / "t", runtime="cudagraph", **FAST)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            profile(space, tmp_path / "t", device="cuda", runtime="cudagraph", **FAST)


def test_rapl_absent_is_clear(monkeypatch, tmp_path):
    from pluto.cost import energy

    monkeypatch.setattr(energy, "POWERCAP", tmp_path / "none")
    with pytest.raises(ConfigError, match="no RAPL"):
        energy.RaplMeter()
    assert energy.open_meter("auto", "cpu") is None


def test_space_config_errors_and_plugin(tmp_path, monkeypatch):
    import sys
    import types

    from torch import nn

    with pytest.raises(ConfigError, match="unknown space keys"):
        ProfileSpace.from_dict({"name": "x", "widths": [1]})
    with pytest.raises(ConfigError, match="no space config"):
        ProfileSpace.load(tmp_path / "missing.yaml")
    plugin = types.ModuleType("fake_nas_space")
    plugin.candidates = lambda: [(nn.Sequential(nn.Conv2d(8, 8, 5, padding=2, groups=8), nn.ReLU()), (1, 8, 14, 14))]
    monkeypatch.setitem(sys.modules, "fake_nas_space", plugin)
    space = ProfileSpace.from_dict({"name": "p", "channel_grid": [4, 8], "modules": "fake_nas_space:candidates"})
    ops = space.unit_ops()
    assert {(op.kind, op.kernel, op.hw, op.act) for op in ops} == {("dwconv", 5, 14, "relu")}
    assert sorted(op.cout for op in ops) == [2, 4, 8]  # min_width 0.25 of 8 = 2 is below the grid: kept


def test_validate_command_measures_and_compares(tmp_path, capsys):
    from pluto.cli import main

    profile(ProfileSpace.from_dict(SPACE), tmp_path / "t", runtime="torch", **FAST)
    code = main(["validate", "--table", str(tmp_path / "t"), "--model", "small_cnn", "--kwargs", "width=0.25",
                 "--input-shape", "1,12,12", "--tolerance", "1000"])
    out = capsys.readouterr().out
    assert code == 0 and "measured" in out and "predicted" in out and "PASS" in out
