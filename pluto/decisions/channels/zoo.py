"""The torchvision classifier zoo as a pruning test bench (used by scripts/prune_zoo.py and the tests).

Each model is built with random weights (never downloaded) at a small input that it accepts, pruned
to a MACs-reduction target with L1 importance through the gates, and checked: the materialized model's
output equals the hard-gated model's, its output shape is unchanged, and MACs/params are measured on
the real smaller model with ``torch.utils.flop_counter``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pluto.decisions.channels.gates import attach_gates, detach_gates
from pluto.decisions.channels.graph import DependencyGraph
from pluto.decisions.channels.importance import channel_importance, keep_for_macs
from pluto.errors import PlutoError


def zoo_models() -> list[str]:
    """Every classification model constructor of torchvision (``torchvision.models.list_models``)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def zoo_input_size(name: str) -> int:
    """The smallest convenient square input each model accepts (pixels)."""
    if name == "inception_v3":
        return 96
    if name == "maxvit_t":
        return 224  # partition size 7 must divide the feature maps
    if name.startswith("vit_"):
        return 4 * int(name.rsplit("_", 1)[1])  # 4 x 4 patches
    return 64


def build_zoo_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    """A torchvision classifier with random weights, in eval mode, and an example batch of 2."""
    kwargs: dict = {}
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=False)
    if name.startswith("vit_"):
        kwargs["image_size"] = zoo_input_size(name)
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    randomize_small_params(model)
    size = zoo_input_size(name)
    return model, torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def randomize_small_params(model: nn.Module) -> None:
    """Replace near-zero initial tensors (zero-init heads, 1e-6 layer scales) so output comparisons mean something."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1 and float(p.abs().max()) < 1e-3:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def count_macs(model: nn.Module, x: torch.Tensor) -> float:
    """Multiply-accumulates per sample (FLOPs / 2, as counted by torch.utils.flop_counter)."""
    flops = FlopCounterMode(display=False)
    with torch.no_grad(), flops:
        model(x[:1])
    return flops.get_total_flops() / 2.0


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "channel_gates" not in n)


@dataclass
class ZooResult:
    model: str
    input: int
    target: float        # fraction of MACs asked to be removed
    params_before: float  # millions
    params_after: float
    macs_before: float    # millions per sample
    macs_after: float
    max_rel_err: float    # |materialized - gated|_max / |gated|_max
    shape_ok: bool
    seconds: float
    status: str = "ok"
    onnx_err: float = float("nan")  # |onnxruntime - torch|_max / |torch|_max of the materialized model, if asked

    def as_dict(self) -> dict:
        return asdict(self)


def onnx_error(model: nn.Module, x: torch.Tensor) -> float:
    """Export ``model`` to ONNX (TorchScript exporter), run it in onnxruntime; relative max error vs torch."""
    import os
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"], output_names=["y"])
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        ref = model(x)
    return float((torch.from_numpy(y) - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def check_model(name: str, targets: tuple[float, ...] = (0.3, 0.7), importance: str = "l1",
                onnx: bool = False) -> list[ZooResult]:
    """Prune ``name`` to each MACs target through the gates and verify the materialized model
    (and, with ``onnx``, its ONNX export in onnxruntime)."""
    from pluto.materialize.prune import materialize

    torch.manual_seed(0)
    model, x = build_zoo_model(name)
    size = x.shape[-1]
    p0, m0 = count_params(model) / 1e6, count_macs(model, x) / 1e6
    t0 = time.perf_counter()
    try:
        graph = DependencyGraph.build(model, x)
    except PlutoError as exc:
        return [ZooResult(name, size, t, p0, float("nan"), m0, float("nan"), float("nan"), False, 0.0,
                          f"unsupported: {str(exc)[:120]}") for t in targets]
    build_s = time.perf_counter() - t0
    score = channel_importance(model, graph, importance)
    rows = []
    for target in targets:
        t1 = time.perf_counter()
        try:
            keep = keep_for_macs(graph, score, target)
        except PlutoError as exc:
            rows.append(ZooResult(name, size, target, p0, float("nan"), m0, float("nan"), float("nan"), False,
                                  build_s, f"infeasible: {str(exc).split(':')[1].split('(')[0].strip()}"))
            continue
        gates = attach_gates(model, graph)
        gates.set_keep(keep)
        gates.set_mode("hard")
        with torch.no_grad():
            ref = model(x)
            small = materialize(model)
            seconds = build_s + time.perf_counter() - t1
            out = small(x)
        detach_gates(model)
        err = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
        rows.append(ZooResult(name, size, target, p0, count_params(small) / 1e6, m0, count_macs(small, x) / 1e6,
                              err, out.shape == ref.shape, seconds, onnx_err=onnx_error(small, x) if onnx else float("nan")))
        del small
    return rows
