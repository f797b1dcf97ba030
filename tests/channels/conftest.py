"""Helpers shared by the channel-pruning tests."""
import pytest
import torch
from torch import nn

from pluto.decisions.channels import DependencyGraph, attach_gates
from pluto.materialize.prune import materialize


def randomize_small_params(model: nn.Module) -> None:
    """Replace near-zero initial tensors (zero-init heads, 1e-6 layer scales) so comparisons are meaningful."""
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1 and float(p.abs().max()) < 1e-3:
                p.normal_(0.0, 0.1)


def random_keep(graph: DependencyGraph, fraction: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(graph.num_channels, generator=gen) < fraction
    for g in graph.groups:  # at least one channel per group, as the gates guarantee
        keep[g.offset] = True
    return keep


def gated_vs_materialized(model: nn.Module, x: torch.Tensor, fraction: float = 0.5, seed: int = 0):
    """Gate ``model`` with a random hard decision; return (gated output, materialized output, small model)."""
    model.eval()
    graph = DependencyGraph.build(model, x)
    gates = attach_gates(model, graph)
    gates.set_keep(random_keep(graph, fraction, seed))
    gates.set_mode("hard")
    with torch.no_grad():
        ref = model(x)
        small = materialize(model)
        out = small(x)
    return ref, out, small


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    torch.manual_seed(0)
