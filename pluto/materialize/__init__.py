"""Soft decisions -> a physically smaller model -> ONNX: ``prune`` (materialize), ``quantize``, ``export``.

The package is callable: ``pluto.materialize(model, ...)`` is :func:`pluto.materialize.prune.materialize`.
Python binds the subpackage to the name ``pluto.materialize`` as soon as any of its modules is imported,
so the exported function and the package must be one object, or the second call would hit a module.
"""
from __future__ import annotations

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from pluto.materialize.prune import materialize

        return materialize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
