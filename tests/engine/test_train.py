import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pluto.engine.checkpoint import load_checkpoint, save_checkpoint
from pluto.errors import ConfigError, PlutoError
from pluto.train import compose, run

SMOKE = ["recipe=smoke", "logger=none", "trainer.threads=1"]


def test_compose_groups_and_recipe():
    cfg = compose(["recipe=baseline_resnet18", "trainer.epochs=3"])
    assert cfg.model.name == "resnet18" and cfg.trainer.epochs == 3 and cfg.run_name == "baseline-resnet18"
    assert set(cfg) >= {"model", "data", "trainer", "hw", "constraints", "compress", "logger"}


def test_bad_override_is_rejected():
    with pytest.raises(ConfigError, match="unknown key"):  # a one-line PlutoError, not a Hydra stack trace
        compose(["trainer.no_such_key=1"])
    with pytest.raises(ConfigError, match="not an option of the recipe group"):
        compose(["recipe=no_such_recipe"])


def test_plain_run_learns_and_saves(tmp_path):
    metrics = run(compose([*SMOKE, "trainer.epochs=4", "data.num_samples=1024"]), run_dir=tmp_path)
    assert metrics["accuracy"] > 60.0  # 10 classes: chance is 10%
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["accuracy"] == pytest.approx(metrics["accuracy"])
    assert (tmp_path / "config.yaml").read_text().count("small_cnn") >= 1
    state = load_checkpoint(tmp_path / "model.pt")["model"]
    assert any(k.endswith("weight") for k in state)
    # a second run into the same folder must not clobber it
    with pytest.raises(ConfigError, match="trainer.resume=true"):
        run(compose(SMOKE), run_dir=tmp_path)


class NotATensor:
    pass


def test_checkpoint_refuses_unsafe_and_corrupt_files(tmp_path):
    torch.save({"x": NotATensor()}, tmp_path / "bad.pt")  # unpickling it would run arbitrary code
    with pytest.raises(PlutoError, match="cannot be loaded safely"):
        load_checkpoint(tmp_path / "bad.pt")
    (tmp_path / "torn.pt").write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(PlutoError, match="corrupt"):
        load_checkpoint(tmp_path / "torn.pt")
    save_checkpoint(tmp_path / "ok.pt", {"w": torch.ones(2)})
    assert torch.equal(load_checkpoint(tmp_path / "ok.pt")["w"], torch.ones(2))


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    """SIGKILL a real training process after its first checkpoint, resume it, compare with a run never killed."""
    args = [*SMOKE, "trainer.epochs=6", "data.num_samples=2048", "trainer.checkpoint_every=5", "trainer.batch_size=32"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "pluto.train", *args, f"hydra.run.dir={killed}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists(), "run finished before the kill; make it longer"
    step_at_kill = load_checkpoint(killed / "last.pt")["state"]["global_step"]
    assert 0 < step_at_kill < 6 * 64

    resumed = run(compose([*args, "trainer.resume=true"]), run_dir=killed)
    straight = run(compose(args), run_dir=tmp_path / "straight")
    assert resumed["accuracy"] == pytest.approx(straight["accuracy"])
    a = load_checkpoint(killed / "model.pt")["model"]
    b = load_checkpoint(tmp_path / "straight" / "model.pt")["model"]
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key
    assert load_checkpoint(killed / "last.pt")["state"]["global_step"] == 6 * 64
