"""The documented Python API: every export works on second use; user models and datasets are checked up front."""
from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import pluto
from pluto.api import check_model_output
from pluto.data import DataSpec, check_datasets, infer_spec
from pluto.errors import ConfigError, DataError


def test_no_export_is_shadowed_by_a_subpackage():
    """Importing every subpackage binds its name on ``pluto``; an export of the same name must still work."""
    for info in pkgutil.walk_packages(pluto.__path__, "pluto."):
        if info.name.endswith(("__main__", ".cli")):
            continue
        try:
            importlib.import_module(info.name)
        except ImportError:  # optional extras (pynvml ...)
            continue
    for name in pluto.__all__:
        first, second = getattr(pluto, name), getattr(pluto, name)
        assert first is second, name
        if name in {m.name for m in pkgutil.iter_modules(pluto.__path__)}:
            assert callable(first), f"pluto.{name} is the subpackage, not the documented callable"


def test_materialize_works_twice_in_one_process():
    from pluto import DependencyGraph, attach_gates

    for _ in range(2):
        model = pluto.create_model("small_cnn", width=0.5).eval()
        x = torch.randn(2, 1, 28, 28)
        gates = attach_gates(model, DependencyGraph.build(model, x[:1]))
        gates.set_mode("hard")
        small = pluto.materialize(model)
        assert small(x).shape == (2, 10)
    import pluto.materialize.export as export  # the package stays importable as a package

    assert callable(export.export_onnx)


def test_cheap_exports_called_twice():
    for _ in range(2):
        assert "small_cnn" in pluto.list_models()
        assert isinstance(pluto.create_model("small_cnn"), nn.Module)
        assert pluto.Constraint("lat", "latency_ms", 0.4).target == 0.4
        assert issubclass(pluto.PlutoError, Exception)


class DictModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x):
        return {"logits": self.fc(x.flatten(1))}


class TupleModel(DictModel):
    def forward(self, x):
        return self.fc(x.flatten(1)), x


class WrongClasses(DictModel):
    def forward(self, x):
        return self.fc(x.flatten(1))[:, :3]


SPEC = DataSpec(10, 1, 28)


@pytest.mark.parametrize("model,match", [(DictModel(), "returns a dict"), (TupleModel(), "returns a tuple"),
                                         (WrongClasses(), r"expected \(2, 10\)"), ("x", "nn.Module")])
def test_model_output_is_checked_before_training(model, match):
    with pytest.raises(ConfigError, match=match):
        check_model_output(model, SPEC)


def test_model_check_keeps_rng_and_mode():
    model = pluto.create_model("small_cnn").train()
    state = torch.get_rng_state()
    check_model_output(model, SPEC)
    assert torch.equal(state, torch.get_rng_state()) and model.training


def test_api_refuses_a_dict_model_before_any_run(tmp_path):
    data = (TensorDataset(torch.randn(32, 1, 28, 28), torch.arange(32) % 10),) * 2
    with pytest.raises(ConfigError, match="returns a dict"):
        pluto.compress(DictModel(), None, {"macs": 1e5}, data=data, teacher=None, run_dir=tmp_path,
                       overrides=["logger=none"])
    assert not (tmp_path / "config.yaml").exists()


class Sorted(Dataset):
    """Labels sorted by class, no ``targets``: the first 5,000 items hold only class 0."""

    def __len__(self):
        return 6000

    def __getitem__(self, i):
        return torch.zeros(1, 8, 8), (0 if i < 5000 else 1 + i % 3)


def test_class_count_comes_from_all_labels():
    assert infer_spec(Sorted()).num_classes == 4
    assert infer_spec(torch.utils.data.Subset(TensorDataset(torch.zeros(5, 1, 8, 8), torch.tensor([0, 1, 2, 3, 9])),
                                              [0, 4])).num_classes == 10


@pytest.mark.parametrize("data,error,match", [
    ((TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)),) * 2, DataError, "empty"),
    ((TensorDataset(torch.zeros(4, 1, 8, 8), torch.tensor([0, -1, 1, 2])),) * 2, DataError, ">= 0"),
    ((TensorDataset(torch.zeros(4, 1, 8, 8), torch.tensor([0.5, 1, 1, 2])),) * 2, DataError, "integers"),
    ((TensorDataset(torch.zeros(4, 1, 8, 6), torch.tensor([0, 1, 1, 2])),) * 2, ConfigError, "square"),
])
def test_bad_user_datasets(data, error, match):
    with pytest.raises(error, match=match):
        infer_spec(check_datasets(data)[0])


def test_datasets_must_be_a_pair():
    with pytest.raises(ConfigError, match="pair"):
        check_datasets([TensorDataset(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]))])


@pytest.mark.parametrize("kwargs,match", [
    ({"constraints": {"latency": 0.4}}, "unknown constraint metric"),
    ({"epochs": {"warmup": -1}}, "compress.epochs.warmup"),
    ({"decison_lr": 0.1}, "did you mean 'compress.decision_lr'"),
    ({"precision": "int3"}, "hw.precision"),
    ({"table": "latency_tables/no_such_table", "constraints": {"latency_ms": 0.4}}, "does not exist"),
])
def test_api_arguments_are_checked_before_any_run(tmp_path, kwargs, match):
    args = {"table": None, "constraints": {"macs": 1e6}, "data": "synthetic", "teacher": None,
            "run_dir": tmp_path / "run", "overrides": ["logger=none"], **kwargs}
    with pytest.raises(ConfigError, match=match):
        pluto.compress("small_cnn", **args)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_api_run_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("keep")
    with pytest.raises(ConfigError, match="is a file"):
        pluto.compress("small_cnn", None, {"macs": 1e6}, data="synthetic", run_dir=tmp_path / "f")
    assert (tmp_path / "f").read_text() == "keep"
