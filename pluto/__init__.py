"""pluto: hardware-aware compression (NAS, aligned pruning, mixed-precision QAT, distillation) under
latency / energy constraints measured on real chips.

The public API is small::

    import pluto
    table = pluto.LatencyTable.load("latency_tables/cpu_ort_xeon_amx")
    result = pluto.compress("small_cnn", table, {"latency_ms": 0.4}, data="fashion_mnist")
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "compress": "pluto.api",
    "CompressionResult": "pluto.api",
    "LatencyTable": "pluto.cost.table",
    "extract_ops": "pluto.cost.ops",
    "expected_cost": "pluto.cost.expected",
    "create_model": "pluto.models",
    "list_models": "pluto.models",
    "DependencyGraph": "pluto.decisions.channels",
    "attach_gates": "pluto.decisions.channels",
    "materialize": "pluto.materialize.prune",
    "Supernet": "pluto.decisions.ops.supernet",
    "derive": "pluto.decisions.ops.derive",
    "prepare_qat": "pluto.decisions.bits",
    "export_onnx": "pluto.materialize.export",
    "save": "pluto.materialize.saving",
    "load": "pluto.materialize.saving",
    "DistillationLoss": "pluto.optimizer.distillation",
    "Constraint": "pluto.optimizer.constraints",
    "LagrangianObjective": "pluto.optimizer.lagrangian",
    "LagrangianConfig": "pluto.optimizer.lagrangian",
    "SpaceConfig": "pluto.decisions.ops.config",
    "expected_supernet_cost": "pluto.decisions.ops.cost",
    "PlutoError": "pluto.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import on first use, so ``import pluto`` stays light and one broken extra cannot break the rest.

    ``materialize`` names both a function and the subpackage ``pluto.materialize``; importing the subpackage
    binds the package to ``pluto.materialize``, so the package itself is callable (see
    ``pluto/materialize/__init__.py``) and ``pluto.materialize(model)`` works however often it is called."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        if name == "materialize":
            value = importlib.import_module("pluto.materialize")
        globals()[name] = value  # later lookups skip __getattr__ and stay the same object
        return value
    raise AttributeError(f"module 'pluto' has no attribute {name!r}")
