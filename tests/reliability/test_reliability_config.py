"""The typed config: every out-of-range or mistyped value is one ConfigError before any work starts."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from pluto.config import JointCompressConfig, LoggerConfig, TrainerConfig, validate_config
from pluto.errors import ConfigError
from pluto.train import compose, execute

BAD = [
    ("trainer.batch_size=0", "trainer.batch_size"), ("trainer.batch_size=-8", "trainer.batch_size"),
    ("trainer.epochs=-1", "trainer.epochs"), ("trainer.epochs=0", "trainer.epochs"),
    ("trainer.epochs=1.5", "whole number"), ("trainer.checkpoint_every=0", "checkpoint_every"),
    ("trainer.log_every=0", "log_every"), ("trainer.lr=abc", "trainer.lr must be a number"),
    ("trainer.lr=0", "trainer.lr"), ("trainer.lr=nan", "finite"), ("seed=abc", "seed"), ("seed=-1", "seed"),
    ("trainer.threads=-1", "trainer.threads"), ("trainer.device=tpu", "trainer.device"),
    ("trainer.optimizer=adam", "did you mean 'adamw'"), ("trainer.scheduler=step", "cosine"),
    ("trainer.resume=yes", "true or false"), ("trainer.label_smoothing=1.5", "label_smoothing"),
    ("trainer.warmup_steps=-5", "warmup_steps"), ("trainer.weight_decay=-1", "weight_decay"),
    ("data.train_limit=0", "data.train_limit"), ("data.test_limit=-3", "data.test_limit"),
    ("data.num_samples=0", "num_samples"), ("data=cifar10", "data.root is required"),
    ("data=fmnist", "did you mean 'fashion_mnist'"), ("data.num_classes=1", "num_classes"),
    ("model.name=resnet19", "did you mean 'resnet18'"), ("model.width=0", "model.width"),
    ("model.widht=2", "did you mean 'model.width'"), ("compress=joint", None),
    ("compress=joint compress.decison_lr=0.1", "did you mean 'compress.decision_lr'"),
    ("compress=joint +compress.decison_lr=0.1", "did you mean 'decision_lr'"),
    ("compress=joint compress.bits=[3]", "bit-width"), ("compress=joint compress.bits=8", "must be a list"),
    ("compress=joint compress.bits=[8,8]", "repeats"), ("compress=joint compress.gate_init=l3", "gate_init"),
    ("compress=joint compress.kd.alpha=2", "kd.alpha"), ("compress=joint compress.epochs.search=-1", "search"),
    ("compress=joint compress.lagrangian.eta=0", "eta"), ("compress=joint compress.init_from=/no/such.pt", "init_from"),
    ("compress=joint constraints.latency_ms=-0.4", "constraints.latency_ms"),
    ("compress=joint constraints.latency_ms=abc", "constraints.latency_ms"),
    ("compress=joint constraints.latency=0.4", "did you mean 'latency_ms'"),
    ("compress=joint +constraints.latency=0.4", "unknown constraint metric"),
    ("compress=joint hw.table=null constraints.latency_ms=0.4", "hw.table"),
    ("compress=joint hw.table=/no/such/table", "does not exist"), ("hw.precision=int3", "hw.precision"),
    ("run_name=../../etc", "run_name"), ("recipe=no_such_recipe", "recipe group"), ("data=null", "needs one"),
    ("+foo=1", "unknown top-level key"), ("logger.tensorboard=2", "true or false"),
    ("trainer.lr=${oops}", "ConfigError"),
]


@pytest.mark.parametrize("overrides,match", BAD, ids=[b[0] for b in BAD])
def test_bad_value_is_one_config_error(overrides, match):
    args = ["recipe=smoke", *overrides.split()]
    if match is None:  # a valid control case
        compose(args)
        return
    with pytest.raises(ConfigError, match=None if match == "ConfigError" else match.replace("(", r"\(")):
        compose(args)


def test_every_recipe_and_group_option_validates(repo_root):
    for recipe in sorted(Path(repo_root, "recipes").glob("*.yaml")):
        compose([f"recipe={recipe.stem}", *(["data.root=/tmp"] if "imagefolder" in recipe.stem else [])])
    for override in ("data=synthetic", "compress=none", "model=supernet_resnet compress.prune=false",
                     "hw=h100_cudagraph", "logger=none", "trainer=quick", "constraints=energy hw=h100_cudagraph",
                     "data=cifar10 data.root=/tmp", "data=imagefolder data.root=/tmp"):
        compose(override.split())


def _yaml(repo_root, path):
    return yaml.safe_load(Path(repo_root, "configs", path).read_text())


def test_yaml_defaults_are_the_schema_defaults(repo_root):
    """pluto/config.py is the one home of defaults; the YAML spells the same values (no contradicting copies)."""
    assert _yaml(repo_root, "trainer/default.yaml") == dataclasses.asdict(TrainerConfig())
    assert _yaml(repo_root, "compress/joint.yaml") == dataclasses.asdict(JointCompressConfig())
    assert _yaml(repo_root, "logger/tensorboard.yaml") == dataclasses.asdict(LoggerConfig())


def test_validated_config_is_complete_and_typed():
    raw = OmegaConf.to_container(compose(["recipe=smoke"], validate=False), resolve=True)
    del raw["trainer"]["log_every"]
    raw["trainer"]["lr"] = 1  # an int where a float is expected is fine
    cfg = validate_config(raw)
    assert cfg.trainer.log_every == TrainerConfig().log_every and isinstance(cfg.trainer.lr, float)
    joint = validate_config({**raw, "compress": {"name": "joint"}})
    assert joint.compress.gate_init == "l1"  # the schema's default, the same as configs/compress/joint.yaml


def test_execute_validates_before_any_work(tmp_path):
    cfg = compose(["recipe=smoke"], validate=False)
    cfg.trainer.batch_size = -4
    with pytest.raises(ConfigError, match="batch_size"):
        execute(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_hydra_entry_point_prints_one_line_and_exits_2(tmp_path):
    import subprocess
    import sys

    for override in ("trainer.batch_size=0", "compress.decison_lr=1", "constraints.latency=0.3"):
        proc = subprocess.run([sys.executable, "-m", "pluto.train", "recipe=smoke", override,
                               f"hydra.run.dir={tmp_path / 'r'}"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("pluto: error:") and "Traceback" not in proc.stderr
