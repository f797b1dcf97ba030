"""Fuzz the table loader and the config validation: only pluto's errors escape, no NaN/negative cost is returned.

The default suite runs a few hundred mutations (seconds); ``-m slow`` runs >= 10,000 of each.
Half of the table mutations re-seal the checksums, so the schema and value checks behind them are fuzzed too.
"""
from __future__ import annotations

import copy
import json
import math
import random
import traceback

import pytest

from pluto.config import validate_config
from pluto.cost.metadata import metadata_digest
from pluto.cost.table import LatencyTable, file_sha256
from pluto.errors import PlutoError

VALUES = [None, True, False, 0, 1, -1, 2, 3, 7, 28, 10**20, -(10**20), 0.5, -0.5, 1e-300, 1e308, float("nan"),
          float("inf"), float("-inf"), "", "x", "fp32", "int8", "cpu", "cuda", "latency_ms", "???", "${oops}",
          [], [1], ["fp32"], [4, 8], {}, {"a": 1}, {"name": "x"}, "1e-3", "0", "null", "sgd", "none"]
CELLS = ["", "nan", "inf", "-inf", "-1", "0", "1", "3", "3.5", "1e400", "99999999999999999999", "abc", "True",
         "fp32", "int8", "conv", "linear", "none", "relu", " ", "\"", "1,2", "-0", "1e-3", "0x10"]


def _paths(obj, prefix=()):
    """Every (path) into a nested dict/list, leaves and containers alike."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _mutate_tree(tree, rng: random.Random):
    tree = copy.deepcopy(tree)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        paths = [p for p in _paths(tree) if p]
        if not paths:
            return rng.choice(VALUES)
        path = rng.choice(paths)
        parent = tree
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        action = rng.random()
        if action < 0.2 and isinstance(parent, dict):
            del parent[key]
        elif action < 0.3 and isinstance(parent, dict):  # a typo'd or invented key
            parent[str(key)[:-1] + rng.choice("xsa_")] = rng.choice(VALUES)
        elif action < 0.4:
            value = parent[key]
            parent[key] = (value * rng.choice((-1, 0, 1e9, 1e-9, 1.5))
                           if isinstance(value, (int, float)) and not isinstance(value, bool) else rng.choice(VALUES))
        else:
            parent[key] = copy.deepcopy(rng.choice(VALUES))
    return tree


def _mutate_csv(data: bytes, rng: random.Random) -> bytes:
    lines = data.decode().splitlines()
    action = rng.random()
    if action < 0.55:
        for _ in range(rng.choice((1, 1, 2, 5))):
            i = rng.randrange(len(lines))
            cells = lines[i].split(",")
            cells[rng.randrange(len(cells))] = rng.choice(CELLS)
            lines[i] = ",".join(cells)
    elif action < 0.65:
        del lines[rng.randrange(1, len(lines))]
    elif action < 0.72:
        lines.insert(rng.randrange(1, len(lines)), lines[rng.randrange(1, len(lines))])
    elif action < 0.8:
        lines = lines[:rng.randrange(0, len(lines))]
    elif action < 0.88:
        text = "\n".join(lines)
        cut = rng.randrange(len(text))
        return text[:cut].encode()
    elif action < 0.94:
        raw = bytearray("\n".join(lines).encode())
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw)
    else:
        header = lines[0].split(",")
        a, b = rng.randrange(len(header)), rng.randrange(len(header))
        header[a], header[b] = header[b], header[a]
        lines[0] = ",".join(header)
    return ("\n".join(lines) + "\n").encode()


def _mutated_table(folder, files, rng: random.Random) -> None:
    meta = json.loads(files["metadata.json"])
    entries = files["entries.csv"]
    target = rng.random()
    if target < 0.45:
        meta = _mutate_tree(meta, rng)
    elif target < 0.9:
        entries = _mutate_csv(entries, rng)
    else:
        meta = _mutate_tree(meta, rng)
        entries = _mutate_csv(entries, rng)
    (folder / "entries.csv").write_bytes(entries)
    if rng.random() < 0.5 and isinstance(meta, dict):  # re-seal: reach the checks behind the checksums
        meta["sha256"] = file_sha256(folder / "entries.csv")
        meta["n_entries"] = max(0, len(entries.decode(errors="replace").strip().splitlines()) - 1)
        meta["metadata_sha256"] = metadata_digest(meta)
    (folder / "metadata.json").write_text(json.dumps(meta))


def _fuzz_tables(tmp_path, files, ops, n: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    outcome = {"refused": 0, "loaded": 0, "priced": 0}
    for i in range(n):
        folder = tmp_path / f"t{i % 7}"
        folder.mkdir(exist_ok=True)
        _mutated_table(folder, files, rng)
        try:
            table = LatencyTable.load(folder)
        except PlutoError:
            outcome["refused"] += 1
            continue
        except Exception:
            pytest.fail(f"mutation {i} (seed {seed}): load raised a non-pluto error:\n{traceback.format_exc()}")
        outcome["loaded"] += 1
        for precision in table.precisions:
            for metric in table.metrics:
                try:
                    value = table.predict_ops(ops, metric, precision)
                except PlutoError:
                    continue
                except Exception:
                    pytest.fail(f"mutation {i} (seed {seed}): predict raised a non-pluto error:\n"
                                f"{traceback.format_exc()}")
                assert math.isfinite(value) and value >= 0, (i, seed, metric, precision, value)
                outcome["priced"] += 1
    return outcome


def _fuzz_configs(base: dict, n: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    outcome = {"refused": 0, "accepted": 0}
    for i in range(n):
        cfg = _mutate_tree(base, rng)
        try:
            checked = validate_config(cfg)
        except PlutoError:
            outcome["refused"] += 1
            continue
        except Exception:
            pytest.fail(f"config mutation {i} (seed {seed}) raised a non-pluto error:\n{traceback.format_exc()}")
        outcome["accepted"] += 1
        t = checked.trainer
        assert t.batch_size >= 1 and t.epochs >= 1 and t.checkpoint_every >= 1 and t.log_every >= 1
        assert math.isfinite(t.lr) and t.lr > 0 and checked.seed >= 0
        assert validate_config(checked) == checked  # idempotent: a checked config passes as it is
    return outcome


@pytest.fixture(scope="module")
def base_config():
    from omegaconf import OmegaConf

    from pluto.train import compose

    return OmegaConf.to_container(compose(["recipe=smoke_compress"], validate=False), resolve=True)


def test_table_loader_fuzz_fast(tmp_path, tiny_table_files, small_cnn_ops):
    outcome = _fuzz_tables(tmp_path, tiny_table_files, small_cnn_ops, 200, seed=1)
    assert outcome["refused"] > 60 and outcome["priced"] > 0  # both paths were exercised


def test_config_fuzz_fast(base_config):
    outcome = _fuzz_configs(base_config, 600, seed=2)
    assert outcome["refused"] > 100 and outcome["accepted"] > 10


def test_override_fuzz_through_compose():
    """Random overrides through Hydra composition: a ConfigError or a checked config, never a Hydra traceback."""
    from pluto.train import compose

    rng = random.Random(3)
    keys = ["trainer.batch_size", "trainer.lr", "trainer.epochs", "seed", "trainer.device", "compress.bits",
            "constraints.latency_ms", "constraints.latency", "compress.decison_lr", "data.train_limit",
            "data", "recipe", "model.name", "hw.table", "trainer.resume", "compress.kd.alpha", "run_name", "hw",
            "compress.epochs", "trainer", "model.width", "logger.tensorboard", "data.root"]
    tokens = ["0", "-1", "1", "abc", "1e-3", "null", "[4,8]", "[3]", "true", "yes", "nan", "inf", "${x}",
              "smoke", "cpu", "tpu", "cuda:0", "'a b'", "{}", "1.5", "9999999999999999999999", "", "[", "a=b"]
    for i in range(60):
        overrides = ["recipe=smoke"] + [f"{rng.choice(keys)}={rng.choice(tokens)}" for _ in range(rng.randint(1, 3))]
        try:
            compose(overrides)
        except PlutoError:
            continue
        except Exception:
            pytest.fail(f"overrides {overrides} raised a non-pluto error:\n{traceback.format_exc()}")


@pytest.mark.slow
def test_table_loader_fuzz_10k(tmp_path, tiny_table_files, small_cnn_ops):
    outcome = _fuzz_tables(tmp_path, tiny_table_files, small_cnn_ops, 10_000, seed=11)
    assert outcome["refused"] > 3000 and outcome["priced"] > 0


@pytest.mark.slow
def test_config_fuzz_10k(base_config):
    outcome = _fuzz_configs(base_config, 10_000, seed=12)
    assert outcome["refused"] > 3000 and outcome["accepted"] > 100
