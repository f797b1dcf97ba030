"""A named data folder is used or refused, never silently replaced by the installed copy."""
from __future__ import annotations

import pytest

from pluto.data import build_datasets
from pluto.data.fashion_mnist import resolve_root
from pluto.errors import ConfigError, DataError


@pytest.mark.parametrize("kind", ["missing", "empty", "file"])
def test_named_root_without_the_files_is_an_error(tmp_path, kind):
    root = tmp_path / "fm"
    if kind == "empty":
        root.mkdir()
    elif kind == "file":
        root.write_text("x")
    with pytest.raises(DataError, match=r"data.root=.*(does not exist|lacks|not a folder)"):
        resolve_root(root)


def test_env_root_without_the_files_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PLUTO_FASHION_MNIST", str(tmp_path))
    with pytest.raises(DataError, match="PLUTO_FASHION_MNIST"):
        resolve_root(None)


@pytest.mark.parametrize("limit", [0, -1, 2.5, True])
def test_limits_must_be_positive_counts(limit):
    with pytest.raises(ConfigError, match="train_limit"):
        build_datasets("synthetic", train_limit=limit, num_samples=16)
