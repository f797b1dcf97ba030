"""StepProbe: the aten ops and host syncs a callable asks of the device, counted without a GPU."""
from __future__ import annotations

import torch

from pluto.engine.probe import StepProbe, probe


def test_counts_every_kind_of_sync_and_where_it_came_from():
    x = torch.randn(6)

    def step():
        float(x.sum())  # _local_scalar_dense
        x[x > 0]  # boolean mask
        torch.nonzero(x)
        x.tolist()
        torch.repeat_interleave(torch.tensor([1, 2]))

    report = probe(step, steps=2, strict=True)
    assert report.calls == 2
    assert report.n_syncs == 2 * 5
    assert report.syncs["aten._local_scalar_dense.default"] == 2
    assert report.syncs["Tensor.tolist"] == 2
    assert any("with a boolean mask" in k for k in report.syncs)
    assert all("test_probe.py" in site for site in report.sites)  # the line that asked, not torch's internals
    assert report.from_python == 2  # torch.tensor([1, 2]) built from Python data each step
    assert report.per_call()["syncs"] == 5


def test_pure_tensor_work_and_optimizer_step_counters_do_not_count():
    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = torch.optim.Adam([w], lr=0.1)  # keeps its step counter on the host and reads it with .item()
    x = torch.randn(5, 4)

    def step():
        loss = (x @ w).relu().sum()
        loss.backward()
        opt.step()
        opt.zero_grad()

    report = probe(step, steps=3, strict=True)
    assert report.n_syncs == 0 and report.from_python == 0
    assert report.n_kernels >= 3 * 4  # forward, backward and the update were all seen
    assert report.n_ops >= report.n_kernels


def test_not_strict_counts_only_reads_of_device_tensors():
    x = torch.randn(3)
    with StepProbe(strict=False) as p:
        float(x.sum())
        x.tolist()
    assert p.report.n_syncs == 0  # a CPU tensor's read waits for no device
    with StepProbe(strict=True) as p:
        float(x.sum())
    assert p.report.n_syncs == 1
