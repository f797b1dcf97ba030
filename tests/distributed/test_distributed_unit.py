"""pluto.engine.distributed on 2 gloo processes (spawned in-test): sync BN, gradient averaging, structure checks."""
import copy
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pluto.engine import distributed
from pluto.errors import PlutoError


def _worker(rank: int, init_file: str, results: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        out = {}
        # SyncBatchNorm2d over the two shards == BatchNorm2d over the whole batch (output, input grad, running stats)
        torch.manual_seed(0)
        x = torch.randn(8, 3, 5, 5) * 2 + 1
        full_bn = nn.BatchNorm2d(3)
        full_x = x.clone().requires_grad_(True)
        (full_bn(full_x) * torch.arange(1.0, 4.0).view(1, 3, 1, 1)).sum().backward()
        bn = nn.Sequential(nn.BatchNorm2d(3))
        part = x[rank * 4:(rank + 1) * 4].clone().requires_grad_(True)
        with distributed.sync_batchnorm(bn):
            assert type(bn[0]) is distributed.SyncBatchNorm2d
            assert type(copy.deepcopy(bn)[0]) is nn.BatchNorm2d  # copies (teachers, measured candidates) are plain
            assert type(bn[0]) is distributed.SyncBatchNorm2d
            y = bn(part)
            (y * torch.arange(1.0, 4.0).view(1, 3, 1, 1)).sum().backward()
        assert type(bn[0]) is nn.BatchNorm2d  # swapped back: tracing, hardening, export see the plain class
        ref = nn.BatchNorm2d(3)
        ref_y = ref(x)[rank * 4:(rank + 1) * 4]
        out["bn_out"] = float((y.detach() - ref_y.detach()).abs().max())
        out["bn_grad"] = float((part.grad - full_x.grad[rank * 4:(rank + 1) * 4]).abs().max())
        out["bn_stats"] = float(max((bn[0].running_mean - ref.running_mean).abs().max(),
                                    (bn[0].running_var - ref.running_var).abs().max()))
        # gradients: averaged; a grad on one rank only counts as zero on the other; none anywhere stays None
        a, b, c = (nn.Parameter(torch.zeros(3)) for _ in range(3))
        a.grad = torch.full((3,), float(rank + 1))
        if rank == 0:
            b.grad = torch.full((3,), 4.0)
        distributed.all_reduce_gradients([a, b, c])
        out["grads"] = (a.grad.tolist(), b.grad.tolist(), c.grad)
        # identical values -> 0; a per-rank value -> its spread
        out["same"] = distributed.max_rank_difference([torch.ones(4)])
        out["spread"] = distributed.max_rank_difference([torch.tensor([float(rank)])])
        # broadcast: rank 1 takes rank 0's weights; different shapes are an error, not a hang
        torch.manual_seed(rank)
        net = nn.Linear(4, 2)
        distributed.broadcast_module(net)
        out["weights"] = net.weight.detach().clone()
        try:
            distributed.check_same_structure(nn.Linear(4, 2 + rank), "pruned model")
            out["mismatch"] = "no error"
        except PlutoError as exc:
            out["mismatch"] = str(exc)
        results[rank] = out
    finally:
        dist.destroy_process_group()


def test_collectives_on_two_processes():
    with tempfile.TemporaryDirectory() as tmp:
        manager = mp.Manager()
        results = manager.dict()
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), results), nprocs=2, join=True)
        results = dict(results)
    for rank in (0, 1):
        r = results[rank]
        assert r["bn_out"] < 1e-5 and r["bn_grad"] < 1e-5 and r["bn_stats"] < 1e-6
        assert r["grads"] == ([1.5] * 3, [2.0] * 3, None)
        assert r["same"] == 0.0 and r["spread"] == 1.0
        assert "differs" in r["mismatch"] and "pruned model" in r["mismatch"]
    assert torch.equal(results[0]["weights"], results[1]["weights"])


def test_single_process_is_a_no_op():
    assert distributed.world_size() == 1 and distributed.is_main() and not distributed.is_distributed()
    p = nn.Parameter(torch.ones(2))
    p.grad = torch.ones(2)
    distributed.all_reduce_gradients([p])
    assert p.grad.tolist() == [1.0, 1.0] and distributed.broadcast_object({"a": 1}) == {"a": 1}
    bn = nn.BatchNorm2d(2)
    with distributed.sync_batchnorm(bn):
        assert type(bn) is nn.BatchNorm2d  # nothing to synchronize with
