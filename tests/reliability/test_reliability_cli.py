"""CLI arguments are checked before work; files are never clobbered by a folder argument."""
from __future__ import annotations

import pytest
import torch

from pluto.cli import build_parser, main
from pluto.engine.checkpoint import save_checkpoint


@pytest.mark.parametrize("args", [
    "profile --space s.yaml --out o --batch 0", "profile --space s.yaml --out o --batch -2",
    "profile --space s.yaml --out o --threads 0", "profile --space s.yaml --out o --samples 0",
    "profile --space s.yaml --out o --energy-window 0", "profile --space s.yaml --out o --limit 0",
    "profile --space s.yaml --out o --batch x", "predict --table t --model m --input-shape 0,28,28",
    "validate --table t --model m --tolerance -1", "export --model small_cnn --out o --calib 0",
    "export --model small_cnn --out o --verify -1", "export --model small_cnn --out o --opset 3",
])
def test_bad_arguments_exit_2_before_work(args, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(args.split())
    assert info.value.code == 2
    assert "error: argument" in capsys.readouterr().err


def test_model_function_help_warns_that_it_runs_code(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "--help"])
    assert "with your user's rights" in " ".join(capsys.readouterr().out.split())


def test_predict_warns_outside_the_profiled_range_and_strict_refuses(repo_root, capsys):
    table = f"{repo_root}/latency_tables/cpu_ort_epyc"
    assert main(["predict", "--table", table, "--model", "small_cnn", "--input-shape", "1,28,28"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["predict", "--table", table, "--model", "small_cnn", "--input-shape", "1,224,224"]) == 0
    assert "extrapolated" in capsys.readouterr().err
    assert main(["predict", "--table", table, "--model", "small_cnn", "--input-shape", "1,224,224", "--strict"]) == 2
    assert "refused" in capsys.readouterr().err


def test_predict_bad_model_inputs_are_errors(repo_root, capsys, tmp_path):
    table = f"{repo_root}/latency_tables/cpu_ort_epyc"
    (tmp_path / "empty.pt").write_bytes(b"")
    for model in ("os:getcwd", "pluto.errors:PlutoError", str(tmp_path / "empty.pt"), "no_such_module:f"):
        assert main(["predict", "--table", table, "--model", model]) == 2, model
        assert "error" in capsys.readouterr().err


def test_export_out_naming_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "model.onnx"
    target.write_text("keep me")
    assert main(["export", "--model", "small_cnn", "--data", "synthetic", "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err and target.read_text() == "keep me"


def test_export_of_a_phase_checkpoint_explains_why_it_does_not_fit(tmp_path, capsys):
    small = torch.nn.Conv2d(1, 3, 3)  # a pruned model's weights do not fit the registry architecture
    save_checkpoint(tmp_path / "finetune.pt", {"model": {"features.0.0.weight": small.weight.detach()},
                                               "state": {"phase": "finetune"}})
    code = main(["export", "--model", "small_cnn", "--data", "synthetic", "--checkpoint",
                 str(tmp_path / "finetune.pt"), "--out", str(tmp_path / "out"), "--verify", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "compression run's training checkpoint" in err and "model.pt" in err
    (tmp_path / "last.pt").write_bytes(b"")
    assert main(["export", "--model", "small_cnn", "--data", "synthetic", "--checkpoint", str(tmp_path / "last.pt"),
                 "--out", str(tmp_path / "out")]) == 2
    assert "empty" in capsys.readouterr().err
