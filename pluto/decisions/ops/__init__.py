"""NAS decisions: which op each block of a supernet runs (MBConv / basic-block kernel, expansion, width, or skip).

Three lines for a user::

    net = Supernet("mbconv_28")                 # or SpaceConfig(...) / a dict
    cost = expected_supernet_cost(net, table, metric="latency_ms")   # differentiable in net.arch_parameters()
    child = derive(net)                         # plain network with the chosen ops only
"""
from pluto.decisions.ops.candidates import BasicBlock, ConvBNAct, InvertedResidual
from pluto.decisions.ops.choice import OpChoice, TemperatureSchedule
from pluto.decisions.ops.config import PRESETS, SpaceConfig, StageSpec, space_config
from pluto.decisions.ops.derive import ChildNet, build_child, derive, recalibrate_batchnorm
from pluto.decisions.ops.supernet import Supernet

MixedOp = OpChoice  # the DARTS / ProxylessNAS name for the same thing


def __getattr__(name: str):
    # the cost hooks import pluto.cost; load them lazily so the space itself has no cost dependency
    if name in ("candidate_modules", "fixed_modules", "profile_modules", "block_costs", "expected_supernet_cost",
                "min_cost_architecture", "architecture_cost", "profile_shipped_spaces"):
        from pluto.decisions.ops import cost
        return getattr(cost, name)
    raise AttributeError(f"module 'pluto.decisions.ops' has no attribute {name!r}")


__all__ = [
    "Supernet", "SpaceConfig", "StageSpec", "PRESETS", "space_config", "OpChoice", "MixedOp", "TemperatureSchedule",
    "InvertedResidual", "BasicBlock", "ConvBNAct", "ChildNet", "derive", "build_child", "recalibrate_batchnorm",
    "candidate_modules", "fixed_modules", "profile_modules", "block_costs", "expected_supernet_cost",
    "min_cost_architecture", "architecture_cost", "profile_shipped_spaces",
]
