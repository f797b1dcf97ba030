"""NAS and channel pruning together: a supernet's stage widths carry channel gates while its op choices search."""
import json
from pathlib import Path

import pytest
import torch

from pluto.cost.model import CostModel
from pluto.cost.ops import extract_ops, total_macs
from pluto.decisions.channels import DependencyGraph
from pluto.decisions.ops import SpaceConfig, StageSpec, Supernet
from pluto.decisions.ops.derive import ChildNet, build_child
from pluto.optimizer.decisions import attach, build_concrete, fix_decisions
from pluto.optimizer.pipeline import Teacher
from pluto.train import compose, run

TABLE = Path(__file__).resolve().parents[2] / "latency_tables" / "cpu_ort_xeon_amx"
TINY_RESNET = SpaceConfig(family="resnet", stem_width=8, stages=(StageSpec(8, 2, 1), StageSpec(16, 2, 2)),
                          kernels=(3,), width_multipliers=(0.5, 1.0), head_width=0)
X = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def _group_of(graph: DependencyGraph, layer: str) -> int:
    (gid,) = {graph.group_of(int(i)) for i in graph.layers[layer].out_index if i >= 0}
    return gid


def _gated(space, seed: int, prune: bool = True) -> tuple[Supernet, object]:
    """A supernet with random hard gates (some channels of every group closed) and a random fixed architecture."""
    torch.manual_seed(seed)
    net = Supernet(space)
    d = attach(net, X, prune, False, (8,))
    with torch.no_grad():
        for logit in d.gates.logits:
            logit.copy_(torch.randn(logit.shape, generator=torch.Generator().manual_seed(seed)) * 3)
    net.fix_architecture(net.random_architecture(torch.Generator().manual_seed(seed)))
    return net, d


def test_supernet_graph_ties_stage_outputs_across_candidates_and_residuals():
    net = Supernet("tiny_28")
    with net.all_paths():
        graph = DependencyGraph.build(net, X)
    assert not any(b.all_paths for b in net.choice_blocks().values())  # the context restores the forward
    # stage 0: every candidate's projection of both blocks (block 1 adds its input back: residual) is one group
    stage0 = {_group_of(graph, f"stages.0.{b}.candidates.{i}.project.conv") for b in (0, 1) for i in range(4)}
    assert len(stage0) == 1
    group = graph.groups[stage0.pop()]
    assert group.size == 16
    assert {f"stages.0.1.candidates.{i}.expand.conv" for i in range(4)} <= set(group.consumers)
    assert {f"stages.1.0.candidates.{i}.expand.conv" for i in range(4)} <= set(group.consumers)
    # each candidate's expansion channels are a group of their own (expand out = depthwise = project in)
    hidden = _group_of(graph, "stages.0.0.candidates.1.expand.conv")
    assert graph.groups[hidden].size == 8 * 6
    assert _group_of(graph, "stages.0.0.candidates.1.depthwise.conv") == hidden
    assert hidden not in {_group_of(graph, f"stages.0.0.candidates.{i}.expand.conv") for i in (0, 2, 3)}
    # the classifier's outputs stay: the last group is the final stage's width (the fc input)
    assert _group_of(graph, "stages.1.1.candidates.0.project.conv") in {
        graph.group_of(int(i)) for i in graph.layers["head.fc"].in_index if i >= 0}


@pytest.mark.parametrize("space", ["tiny_28", TINY_RESNET], ids=["mbconv", "resnet"])
@pytest.mark.parametrize("seed", [0, 1])
def test_gated_supernet_equals_materialized_child(space, seed):
    net, d = _gated(space, seed)
    d.gates.set_mode("hard")
    fix_decisions(d)  # widths rounded to their hard counts: the gated forward is what materializes
    net.eval()
    with torch.no_grad():
        gated = net(X)
    child, trail = build_concrete(d, X)
    assert isinstance(child, ChildNet) and trail["architecture"] == net.architecture()
    assert any(w["channels_after"] < w["channels_before"] for w in trail["widths"])
    child.eval()
    with torch.no_grad():
        assert torch.allclose(child(X), gated, atol=1e-5)
    # the expected MACs of the hard decisions are the materialized child's MACs, exactly
    expected = float(CostModel(net, (1, 1, 28, 28), None).expected("macs", d.channels()).detach())
    assert expected == pytest.approx(total_macs(extract_ops(child, (1, 1, 28, 28))), rel=1e-6)


@pytest.mark.skipif(not (TABLE / "metadata.json").exists(), reason="no shipped cpu_ort_xeon_amx table")
def test_expected_cost_follows_the_gates():
    from pluto.cost.table import LatencyTable

    table = LatencyTable.load(TABLE)
    net = Supernet("tiny_28")
    cost = CostModel(net, (1, 1, 28, 28), table, "int8")
    d = attach(net, X, True, False, (8,), gate_init_keep=0.95)
    d.gates.set_mode("soft")
    saved = [logit.detach().clone() for logit in d.gates.logits]
    with torch.no_grad():
        for logit in d.gates.logits:
            logit.fill_(30.0)  # p = 1: every channel kept, as expected (real-valued, differentiable) widths
    full = d.channels()
    with torch.no_grad():
        for logit, value in zip(d.gates.logits, saved):
            logit.copy_(value)
    for metric in ("latency_ms", "macs", "size_bytes"):
        # the reference: every channel kept, priced like any expected (real-valued) width — on a table with unaligned
        # grids the nominal widths themselves (24, 40, ... on a chip whose fast multiple is 16) read the slow grid,
        # while expected widths read the aligned one, because the materializer snaps pruned widths to it
        nominal = float(cost.expected(metric, full)) if metric == "latency_ms" else float(cost.expected(metric))
        opened = cost.expected(metric, d.channels())
        # every gate at p = 0.95: ~0.95-0.9 x the full cost; latency's calibrated activation-traffic term (signed,
        # linear in widths) may hold it within 1 % of full this close to full width
        assert 0.8 * nominal < float(opened) < (nominal * 1.01 if metric == "latency_ms" else nominal)
        opened.backward()
        assert all(logit.grad is not None and float(logit.grad.abs().sum()) > 0 for logit in d.gates.logits[:3])
        for logit in d.gates.logits:
            logit.grad = None
    before = float(cost.expected("latency_ms", d.channels()))
    stage0 = _group_of(d.gates.graph, "stages.0.0.candidates.0.project.conv")
    with torch.no_grad():
        d.gates.logits[stage0][:8] = -10.0  # close half of stage 0's channels (every candidate at once)
    after = float(cost.expected("latency_ms", d.channels()))
    assert after < before
    # the feasibility floor knows the widths can shrink: below the cheapest architecture at nominal widths
    floor = {k: (1.0, 1.0) for k in d.channels()}
    assert cost.minimum("latency_ms", floor) < cost.minimum("latency_ms")
    # one-hot ops and hard gates: the expected latency is the table's prediction of the materialized child
    net.fix_architecture(net.random_architecture(torch.Generator().manual_seed(3)))
    d.gates.set_mode("hard")
    fix_decisions(d)
    child, _ = build_concrete(d, X)
    predicted = cost.of_model(child, "latency_ms")
    assert float(cost.expected("latency_ms", d.channels(), raw=True)) == pytest.approx(predicted, rel=1e-4)


def test_self_teacher_of_a_supernet_is_its_biggest_child():
    from pluto.data import DataSpec

    net = Supernet("tiny_28")
    teacher = Teacher("self", DataSpec(num_classes=10, in_channels=1, input_size=28), torch.device("cpu"))
    teacher.build(net)
    assert isinstance(teacher.model, ChildNet)
    assert teacher.model.architecture == net.largest_architecture()
    assert all(name.endswith("_e6") for name in teacher.model.architecture.values())
    assert teacher(X).shape == (4, 10)


def test_recalibrated_child_evaluates_with_its_own_batchnorm_statistics():
    from pluto.decisions.ops import derive, recalibrate_batchnorm

    net = Supernet("tiny_28")
    child = derive(net, net.largest_architecture())
    for bn in (m for m in child.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_var.fill_(100.0)  # statistics collected behind other paths: nothing like the child's own
    images = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        own = child.train()(images)
        assert not torch.allclose(child.eval()(images), own, atol=1e-2)
        recalibrate_batchnorm(child, images)
        assert not child.training and child.stem.bn.momentum == 0.1
        assert torch.allclose(child(images), own, atol=1e-2)  # eval mode now normalizes as the batch does


def test_nas_prune_quantize_distill_in_one_run(tmp_path):
    metrics = run(compose(["recipe=smoke_compress", "logger=none", "trainer.threads=1", "hw.table=null",
                           "model=supernet_mbconv", "model.space=tiny_28", "compress.prune=true",
                           "compress.quantize=true", "compress.distill=true", "compress.bits=[8,32]",
                           "constraints.macs=0.3x"]), run_dir=tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    (verdict,) = report["constraints"]
    # a relative target is a factor of the supernet's biggest child (its uncompressed deployment)
    net = Supernet("tiny_28")
    biggest = total_macs(extract_ops(build_child(net.config, net.largest_architecture()), (1, 1, 28, 28)))
    assert verdict["uncompressed"] == pytest.approx(biggest) and verdict["target"] == pytest.approx(0.3 * biggest)
    assert verdict["holds"] is True and verdict["measured"] <= verdict["target"] and metrics["constraints_hold"] == 1
    decisions = report["decisions"]
    assert set(decisions["architecture"]) == {"stages.0.0", "stages.0.1", "stages.1.0", "stages.1.1"}
    assert any(w["channels_after"] < w["channels_before"] for w in decisions["widths"])
    assert decisions["bits"] and set(decisions["bits"].values()) <= {8, 32}
    assert (tmp_path / "model_int8.onnx").exists() and "onnx_int8_accuracy" in metrics
    layers = (tmp_path / "layers.csv").read_text().splitlines()
    assert all(row.split(",")[6] for row in layers[1:])  # cout_before: the chosen ops at the space's full widths


def test_sandwich_warmup_reports_the_dense_reference_each_epoch_and_leaves_alpha_alone(tmp_path):
    cfg = compose(["recipe=smoke_compress", "logger=none", "trainer.threads=1", "hw.table=null",
                   "model=supernet_mbconv", "model.space=tiny_28", "compress.prune=false", "compress.quantize=false",
                   "compress.distill=false", "compress.supernet_warmup_mode=sandwich", "compress.epochs.warmup=1",
                   "compress.epochs.search=0", "compress.epochs.finetune=0", "constraints.macs=null"])
    run(cfg, run_dir=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    (epoch,) = [r["warmup/test_accuracy"] for r in rows if "warmup/test_accuracy" in r]
    # the epoch's figure is the supernet's biggest child with its own BN statistics, as the dense reference is
    # (a sampled path per batch scored a different random network every batch)
    report = json.loads((tmp_path / "report.json").read_text())
    assert epoch == pytest.approx(report["dense_reference"]["accuracy"])
    assert any("loss/task_biggest" in r for r in rows)
    warm = torch.load(tmp_path / "warmup.pt", weights_only=True)["model"]
    alphas = [v for k, v in warm.items() if k.endswith(".alpha")]
    assert alphas and all(float(a.abs().max()) == 0 for a in alphas)  # the sandwich's paths leave the logits alone


def test_landing_silences_only_channels_the_search_did_not_train():
    from pluto.optimizer.pipeline import silence_untrained

    torch.manual_seed(0)
    net = Supernet("tiny_28")
    d = attach(net, X, True, False, (8,))
    n = d.gates.graph.num_channels
    searched = torch.ones(n, dtype=torch.bool)
    searched[::3] = False  # the search's forward ran without every third channel
    d.gates.set_keep(torch.zeros(n, dtype=torch.bool) | ~searched.roll(1))  # a projection took others away too ...
    d.gates.set_keep(torch.ones(n, dtype=torch.bool))  # ... and the landing grew every channel back
    weights = {name: m.weight.detach().clone() for name, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)}
    trail = silence_untrained(d, searched)
    assert trail["regrown_channels"] == int((~searched).sum())  # the trained ones come back as they were
    assert trail["regrown_consumer_slices_zeroed"] > 0
    for name, layer in d.gates.graph.layers.items():
        if layer.kind != "conv" or not bool((layer.in_index >= 0).any()) or name not in weights:
            continue
        w, w0 = dict(net.named_modules())[name].weight.detach(), weights[name]
        reads = layer.in_index.clamp_min(0)
        trained = (layer.in_index >= 0) & searched[reads]
        if w.shape[1] == len(layer.in_index):  # a dense conv: its input slices of trained channels are untouched
            assert torch.equal(w[:, trained], w0[:, trained])
            assert not w[:, (layer.in_index >= 0) & ~searched[reads]].any()
