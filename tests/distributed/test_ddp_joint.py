"""torchrun data parallelism for a compression run (warmup, search, harden, finetune, report): 2 gloo processes."""
import json

import pytest

from torchrun_jobs import kill_torchrun_after_checkpoint, load_state, max_weight_difference, single, torchrun

BASE = ["recipe=smoke_compress", "logger=none", "hw.measure=off", "trainer.threads=1", "+model.dropout=0.0", "trainer.sync_bn=true",
        "data.num_samples=256", "compress.epochs.warmup=1", "compress.epochs.search=1", "compress.epochs.finetune=1"]


def _divergence(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {k: row[k] for row in rows for k in row if k.endswith("rank_divergence")}


def test_two_process_joint_run_matches_one_process(tmp_path):
    single([*BASE, "trainer.batch_size=64"], tmp_path / "one")
    torchrun([*BASE, "trainer.batch_size=32"], tmp_path / "two")
    one, two = tmp_path / "one", tmp_path / "two"
    # every rank held bit-identical weights, decision logits and Lagrange multipliers after every epoch
    assert _divergence(two) == {"warmup/rank_divergence": 0.0, "search/rank_divergence": 0.0,
                                "finetune/rank_divergence": 0.0}
    # the same hard decisions (widths, bits, projection) and multipliers as one process with the global batch
    assert json.loads((one / "decisions.json").read_text()) == json.loads((two / "decisions.json").read_text())
    r1, r2 = (json.loads((d / "report.json").read_text()) for d in (one, two))
    assert r2["multipliers"] == pytest.approx(r1["multipliers"], rel=1e-6)
    # weights: float summation order differs (per-rank shards), amplified by max-pool / STE / LSQ rounding flips
    assert max_weight_difference(load_state(one / "warmup.pt"), load_state(two / "warmup.pt")) < 1e-3
    assert max_weight_difference(load_state(one / "finetune.pt"), load_state(two / "finetune.pt")) < 2e-2
    # rank 0 alone wrote the outputs; the deployable model.pt carries its architecture
    assert (two / "report.json").exists() and (two / "model_int8.onnx").exists()
    import pluto

    restored = pluto.load(two / "model.pt")
    assert max_weight_difference(restored.state_dict(), load_state(two / "finetune.pt")) == 0.0


def test_killed_two_process_joint_run_resumes_mid_search(tmp_path):
    from pluto.engine.checkpoint import load_checkpoint

    args = [*BASE, "trainer.batch_size=32", "data.num_samples=512", "compress.epochs.search=2",
            "trainer.checkpoint_every=3"]
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    kill_torchrun_after_checkpoint(args, killed, phase="search")
    assert not (killed / "report.json").exists(), "run finished before the kill"
    assert load_checkpoint(killed / "last.pt")["state"]["phase"] == "search"
    torchrun([*args, "trainer.resume=true"], killed)
    torchrun(args, straight)
    assert json.loads((killed / "decisions.json").read_text()) == json.loads((straight / "decisions.json").read_text())
    r1, r2 = (json.loads((d / "report.json").read_text()) for d in (killed, straight))
    assert r1["multipliers"] == pytest.approx(r2["multipliers"], rel=1e-9)
    assert max_weight_difference(load_state(killed / "finetune.pt"), load_state(straight / "finetune.pt")) < 1e-5
