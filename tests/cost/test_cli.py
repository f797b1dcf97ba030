from pluto.cli import main

from conftest import make_table


def test_predict_and_show(tmp_path, tiny_space, capsys):
    make_table(tiny_space).save(tmp_path / "t")
    assert main(["predict", "--table", str(tmp_path / "t"), "--model", "small_cnn", "--kwargs", "width=0.5"]) == 0
    out = capsys.readouterr().out
    assert "ms" in out and "small_cnn" in out
    assert main(["predict", "--table", str(tmp_path / "t"), "--model", "small_cnn", "--metric", "energy_mj",
                 "--kwargs", "width=0.5"]) == 0
    assert main(["table", "show", str(tmp_path / "t")]) == 0


def test_bad_inputs_are_clean_errors(tmp_path, tiny_space, capsys):
    assert main(["predict", "--table", str(tmp_path / "missing"), "--model", "small_cnn"]) == 2
    assert "no latency table" in capsys.readouterr().err
    make_table(tiny_space).save(tmp_path / "t")
    assert main(["predict", "--table", str(tmp_path / "t"), "--model", "nonexistent"]) == 2
    assert "unknown model" in capsys.readouterr().err
    # a CPU table made on another machine is measured here against its prediction, with a one-line warning
    assert main(["validate", "--table", str(tmp_path / "t"), "--model", "small_cnn", "--kwargs", "width=0.5"]) in (0, 1)
    out = capsys.readouterr().out
    assert "made on 'Test CPU'" in out and "pluto table calibrate" in out and "measured" in out


def test_import_energy(tmp_path, tiny_space, capsys):
    table = make_table(tiny_space, energy=False)
    table.save(tmp_path / "t")
    readings = table.entries.drop(columns=["energy_mj"]).assign(energy_mj=lambda f: f["latency_ms"] * 3)
    readings.to_csv(tmp_path / "meter.csv", index=False)
    assert main(["table", "import", str(tmp_path / "t"), str(tmp_path / "meter.csv"), "--out", str(tmp_path / "e")]) == 0
    assert main(["predict", "--table", str(tmp_path / "e"), "--model", "small_cnn", "--metric", "energy_mj",
                 "--kwargs", "width=0.5"]) == 0
    readings.iloc[:-1].to_csv(tmp_path / "partial.csv", index=False)
    assert main(["table", "import", str(tmp_path / "t"), str(tmp_path / "partial.csv"), "--out", str(tmp_path / "x")]) == 2
    assert "no reading for 1" in capsys.readouterr().err
