"""Super-resolution through the same compression run: recipe, Hydra task selection and the Python API."""
import json

import pandas as pd
import pytest
import torch
from torch.utils.data import TensorDataset

import pluto
from pluto.cost.profiler import COLUMNS
from pluto.cost.space import ProfileSpace
from pluto.cost.table import SCHEMA_VERSION, LatencyTable, entry_key
from pluto.errors import ConfigError
from pluto.train import compose, run

TINY = ["logger=none", "trainer.threads=1", "data.train_limit=128", "data.test_limit=64", "model.width=8",
        "model.blocks=1", "compress.epochs.warmup=1", "compress.epochs.search=1", "compress.epochs.finetune=1",
        "trainer.batch_size=32", "trainer.checkpoint_every=1000"]


def sr_table(path) -> str:
    """A synthetic table over the SR space (1 us + 1 ns per MAC + 1 ns per output element), measured 'elsewhere'."""
    rows = []
    space = ProfileSpace.load("configs/space/fmnist_sr.yaml")
    for precision in ("fp32", "int8"):
        for op in space.unit_ops():
            value = (1e-3 + op.macs * 1e-6 + op.cout * op.hw_out ** 2 * 1e-6) / (2 if precision == "int8" else 1)
            rows.append([*entry_key(op, precision), value, value * 0.01, None, 30])
    metadata = {"schema_version": SCHEMA_VERSION, "name": "synthetic_sr",
                "device": {"type": "cpu", "name": "Test CPU", "machine": "elsewhere"},
                "runtime": {"name": "onnxruntime"}, "precisions": ["fp32", "int8"], "metrics": ["latency_ms"],
                "batch": 1, "threads": 1, "created": "2026-12-05", "command": "synthetic", "method": {}, "align": 1,
                "space": space.source}
    LatencyTable(pd.DataFrame(rows, columns=list(COLUMNS)), metadata).save(path)
    return str(path)


def test_recipe_selects_the_sr_task_data_model_and_a_relative_latency_target():
    cfg = compose(["recipe=fmnist_sr_cpu"])
    assert (cfg.task.name, cfg.model.name, cfg.data.name) == ("sr", "edsr", "fashion_mnist_sr")
    assert cfg.constraints.latency_ms == "0.8x" and cfg.hw.table == "latency_tables/cpu_ort_xeon_amx"
    assert cfg.model.scale == cfg.data.scale == 2 and cfg.data.test_limit is None


def test_sr_joint_run_under_a_latency_table(tmp_path):
    table = sr_table(tmp_path / "table")
    metrics = run(compose(["recipe=fmnist_sr_cpu", f"hw.table={table}", "constraints.latency_ms=0.9x", "hw.adapt=off", "hw.measure=off", *TINY]),
                  run_dir=tmp_path / "run")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    (verdict,) = report["constraints"]
    assert verdict["metric"] == "latency_ms" and verdict["holds"] is None  # not measured (hw.measure=off): predicted only
    assert verdict["predicted"] <= verdict["target"] == pytest.approx(0.9 * verdict["uncompressed_predicted"])
    assert metrics["psnr"] > 10.0 and 0.0 < metrics["ssim"] <= 1.0 and "dense_psnr" in metrics
    assert abs(metrics["onnx_int8_psnr"] - metrics["psnr"]) < 0.3 and metrics["onnx_fp32_max_abs_diff"] < 1e-4
    layers = pd.read_csv(tmp_path / "run" / "layers.csv").set_index("layer")
    assert layers.loc["upsampler.0", "cout"] == 4 * layers.loc["tail", "cin"]  # PixelShuffle stays valid
    assert layers.loc["tail", "cout"] == 1 and (tmp_path / "run" / "model_int8.onnx").exists()


def test_python_api_sr_on_user_pairs_infers_the_task(tmp_path):
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(96, 1, 16, 16, generator=g)
    lr = torch.nn.functional.avg_pool2d(hr, 2)
    data = (TensorDataset(lr[:64], hr[:64]), TensorDataset(lr[64:], hr[64:]))
    model = pluto.create_model("espcn", in_channels=1, input_size=8, width=16, mid=8)
    result = pluto.compress(model, None, {"macs": "0.5x"}, data=data, epochs={"warmup": 1, "search": 1, "finetune": 1},
                            run_dir=tmp_path, overrides=["logger=none", "trainer.batch_size=32", "trainer.threads=1"])
    assert result.metrics["psnr"] > 5.0 and result.report["constraints"][0]["holds"] is True
    assert result.model(lr[:2]).shape == (2, 1, 16, 16)


def test_mismatched_task_data_and_model_fail_with_a_fix(tmp_path):
    with pytest.raises(ConfigError, match="add task=sr"):
        run(compose(["data=fashion_mnist_sr", *TINY[:4]]), run_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match="model.scale"):
        run(compose(["recipe=fmnist_sr_cpu", "hw.table=null", "constraints.latency_ms=null", "model.scale=3", *TINY]),
            run_dir=tmp_path / "b")
    with pytest.raises(ConfigError, match="classifiers only"):
        run(compose(["recipe=fmnist_sr_cpu", "compress=none", *TINY[:4]]), run_dir=tmp_path / "c")


def test_api_model_name_uses_its_config_group(tmp_path, monkeypatch):
    seen = {}

    def fake_execute(cfg, run_dir, model=None, datasets=None):
        seen["cfg"] = cfg
        return {}, None

    monkeypatch.setattr("pluto.train.execute", fake_execute)
    pluto.compress("edsr", None, {"macs": "0.5x"}, data="fashion_mnist_sr", run_dir=tmp_path)
    assert seen["cfg"].model.width == 32 and seen["cfg"].model.scale == 2 and seen["cfg"].task.name == "sr"


def test_hint_kd_is_in_the_loss_of_every_phase_with_a_teacher(tmp_path, monkeypatch):
    """task.hint_weight > 0: the search and fine-tune losses carry the attention-transfer term (same seed, same
    first step: loss = loss without hints + weight x hint), the gradients change the trained model, and the hooks
    are gone before the model is exported and saved."""
    from pluto.tasks.sr import SuperResolution

    calls: list[tuple[float, float | None]] = []
    original = SuperResolution.distill_loss

    def spy(self, output, teacher_output, target):
        loss = original(self, output, teacher_output, target)
        calls.append((loss.item(), self.hint_loss().item() if self._taps else None))
        return loss

    monkeypatch.setattr(SuperResolution, "distill_loss", spy)
    base = ["recipe=fmnist_sr_cpu", "hw.table=null", "constraints.latency_ms=null", "constraints.macs=0.6x", *TINY,
            "compress.quantize=false", "task.hint_layers=[body_end]"]
    results = {}
    for weight in (0.0, 5.0):
        calls.clear()
        metrics = run(compose([*base, f"task.hint_weight={weight}"]), run_dir=tmp_path / f"w{weight}")
        results[weight] = (list(calls), metrics)
    plain, hinted = results[0.0][0], results[5.0][0]
    assert len(plain) == len(hinted) == 8  # 4 search + 4 fine-tune steps (128 images, batches of 32)
    assert all(h is None for _, h in plain) and all(h is not None and h > 0 for _, h in hinted)
    assert hinted[0][0] == pytest.approx(plain[0][0] + 5.0 * hinted[0][1], rel=1e-4)
    assert results[0.0][1]["psnr"] != results[5.0][1]["psnr"]  # the hint gradients trained another model
    model = pluto.load(tmp_path / "w5.0" / "model.pt")
    assert not any(m._forward_hooks for m in model.modules())
    with pytest.raises(ConfigError, match="hint layer"):
        run(compose([*base, "task.hint_weight=1", "task.hint_layers=[nope]"]), run_dir=tmp_path / "typo")
    with pytest.raises(ConfigError, match="task.hint_layers is empty"):
        compose([*base, "task.hint_weight=1", "task.hint_layers=[]"])


def _png_folder(root, counts=(("train", 6), ("val", 2)), size=(24, 28)):
    """A tiny image folder: smooth colour gradients with a bright square (PIL PNGs, RGB)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size[0], 0:size[1]] / max(size)
    for split, n in counts:
        (root / split / "photos").mkdir(parents=True)
        for i in range(n):
            a, b, c = rng.uniform(0.2, 1.0, 3)
            img = np.stack([a * xx, b * yy, c * (1 - xx)], -1)
            top, left = rng.integers(0, 12, 2)
            img[top:top + 8, left:left + 8] = 1.0
            Image.fromarray((img * 255).astype(np.uint8)).save(root / split / "photos" / f"{i}.png")
    return root


def test_imagefolder_recipe_runs_on_a_folder_of_pngs(tmp_path):
    root = _png_folder(tmp_path / "images")
    tiny = [f"data.root={root}", "data.crop=16", "logger=none", "trainer.threads=1", "trainer.batch_size=4",
            "model.width=8", "model.blocks=1", "compress.epochs.warmup=1", "compress.epochs.search=1",
            "compress.epochs.finetune=1", "trainer.checkpoint_every=1000"]
    metrics = run(compose(["recipe=imagefolder_sr_cpu", *tiny]), run_dir=tmp_path / "run")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    (verdict,) = report["constraints"]
    assert verdict["metric"] == "macs" and verdict["holds"] is True
    assert metrics["psnr"] > 5.0 and 0.0 < metrics["ssim"] <= 1.0 and abs(metrics["onnx_int8_psnr"] - metrics["psnr"]) < 0.5
    model = pluto.load(tmp_path / "run" / "model.pt")
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 3, 16, 16) and (tmp_path / "run" / "model_int8.onnx").exists()


def test_imagefolder_recipe_names_a_missing_or_empty_folder(tmp_path):
    from pluto.errors import DataError

    with pytest.raises(ConfigError, match="data.root is required"):
        compose(["recipe=imagefolder_sr_cpu"])
    with pytest.raises(DataError, match="data.root=.* is not a folder"):
        run(compose(["recipe=imagefolder_sr_cpu", f"data.root={tmp_path / 'nowhere'}", "logger=none"]),
            run_dir=tmp_path / "a")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="train holds no images"):
        run(compose(["recipe=imagefolder_sr_cpu", f"data.root={tmp_path / 'empty'}", "logger=none"]),
            run_dir=tmp_path / "b")
    _png_folder(tmp_path / "no_val", counts=(("train", 2),))
    with pytest.raises(DataError, match="val not found"):
        run(compose(["recipe=imagefolder_sr_cpu", f"data.root={tmp_path / 'no_val'}", "logger=none"]),
            run_dir=tmp_path / "c")
