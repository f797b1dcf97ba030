"""Checkpoints that carry the compressed architecture: ``pluto.save(model, path)`` / ``pluto.load(path)``.

A compressed model differs from the architecture its code builds: channels were removed
(:func:`pluto.materialize.prune.materialize`), a supernet was reduced to one child
(:func:`pluto.decisions.ops.derive`), layers were made quantization-aware at chosen bit-widths
(:func:`pluto.decisions.bits.prepare_qat`). :func:`save` writes one file that holds both:

- ``"model"``: the state dict (tensors only, read back with ``torch.load(weights_only=True)``, so
  loading never runs code; existing readers of a run's ``model.pt`` keep working);
- ``"architecture"``: a versioned JSON document (a string) saying how to rebuild the module tree
  before the weights go in: the builder (a registry model and its arguments, or a NAS child: its
  space and chosen ops), each conv/linear/norm layer's channel counts, every tensor's shape, and
  the bit-width of every quantized layer, and the residual blocks that depth decisions removed.

:func:`load` builds the model the JSON names, shrinks each layer and tensor to its saved shape,
re-prepares the quantized layers at their bit-widths (QAT state: LSQ steps, chosen bits) and
loads the weights: no run folder, config or decisions file is needed. A model pluto's registry
cannot build (your own ``nn.Module``) is restored onto a freshly built instance:
``pluto.load(path, model=MyNet())``, as ModelOpt's ``mto.restore`` does.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pluto.errors import ConfigError

FORMAT = "pluto.model"
VERSION = 1
SPEC_ATTR = "pluto_spec"  # set by pluto.models.create_model: {"name": ..., "kwargs": {...}}

# constructor attributes that pruning changes, per layer type (see pluto.materialize.prune)
_LAYER_ATTRS = {
    nn.Conv2d: ("in_channels", "out_channels", "groups"),
    nn.Linear: ("in_features", "out_features"),
    nn.BatchNorm2d: ("num_features",),
    nn.BatchNorm1d: ("num_features",),
    nn.LayerNorm: ("normalized_shape",),
}
_QUANT = ".parametrizations.weight."


def _float_name(name: str) -> str | None:
    """The float model's name of a state tensor; None for quantization state (rebuilt by prepare_qat)."""
    if _QUANT + "original" in name:
        return name.replace(_QUANT + "original", ".weight")
    return None if ".parametrizations." in name else name


def _layer_type(module: nn.Module) -> type | None:
    return next((t for t in _LAYER_ATTRS if isinstance(module, t)), None)


def describe(model: nn.Module, builder: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-able structure :func:`load` rebuilds ``model`` from (see the module docstring)."""
    from pluto.decisions.bits import bit_choices
    from pluto.decisions.channels.gates import GATES_ATTR

    from pluto.decisions.depth import BLOCK_GATES_ATTR, SKIPPED_ATTR

    if getattr(model, GATES_ATTR, None) is not None or getattr(model, BLOCK_GATES_ATTR, None) is not None:
        raise ConfigError("the model still has channel or block gates attached; save the hardened model "
                          "(pluto.materialize(model) or the run's final model), not the one being searched")
    layers = {}
    for name, module in model.named_modules():
        kind = _layer_type(module)
        if kind is not None:
            layers[name] = {"type": kind.__name__,
                            **{a: list(v) if isinstance(v := getattr(module, a), tuple) else v for a in _LAYER_ATTRS[kind]}}
    tensors = {}
    for name, t in model.state_dict().items():
        float_name = _float_name(name)
        if float_name is not None:
            tensors[float_name] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
    choices = bit_choices(model)
    skipped = dict(getattr(model, SKIPPED_ATTR, {}) or {})
    return {
        "format": FORMAT, "version": VERSION, "builder": builder or builder_of(model), "layers": layers,
        "tensors": tensors, **({"skipped_blocks": skipped} if skipped else {}),
        "quantization": {name: {"bits": int(c.chosen_bits), "candidates": list(c.candidates), "hard": bool(c.is_hard)}
                         for name, c in choices.items()},
    }


def builder_of(model: nn.Module) -> dict[str, Any]:
    """How to build the unpruned architecture: a NAS child, a registry model, or a user class (needs ``model=``)."""
    from pluto.decisions.ops.derive import ChildNet

    if isinstance(model, ChildNet):
        return {"kind": "nas_child", "space": model.config.to_dict(), "architecture": dict(model.architecture)}
    spec = getattr(model, SPEC_ATTR, None)
    if spec is not None:
        return {"kind": "registry", "name": spec["name"], "kwargs": dict(spec["kwargs"])}
    cls = type(model)
    return {"kind": "user", "class": f"{cls.__module__}.{cls.__qualname__}"}


def save(model: nn.Module, path: str | os.PathLike, builder: dict[str, Any] | None = None,
         extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (architecture + weights + bit-widths) to ``path`` atomically; :func:`load` restores it.

    ``builder`` overrides how the base architecture is built (default :func:`builder_of`);
    ``extra``: more tensors / plain values to store beside it (e.g. run metadata).
    """
    from pluto.engine.checkpoint import save_checkpoint

    structure = describe(model, builder)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return save_checkpoint(path, {**(extra or {}), "model": state, "architecture": json.dumps(structure)})


def read_structure(path: str | os.PathLike) -> dict[str, Any]:
    """The architecture JSON of a file written by :func:`save` (checked for format and version)."""
    from pluto.engine.checkpoint import load_checkpoint

    return _structure(load_checkpoint(path), path)


def _structure(payload: dict[str, Any], path: Any) -> dict[str, Any]:
    if not isinstance(payload, dict) or "architecture" not in payload:
        raise ConfigError(f"{path} holds weights only (no architecture); it was not written by pluto.save. "
                          "Load it into the model it came from with model.load_state_dict(...)")
    structure = json.loads(payload["architecture"])
    if structure.get("format") != FORMAT:
        raise ConfigError(f"{path}: unknown architecture format {structure.get('format')!r}")
    if int(structure.get("version", 0)) > VERSION:
        raise ConfigError(f"{path} was written by a newer pluto (format version {structure['version']} > {VERSION}); "
                          "upgrade pluto to load it")
    return structure


def _build(builder: dict[str, Any]) -> nn.Module:
    kind = builder.get("kind")
    if kind == "registry":
        from pluto.models import create_model

        return create_model(builder["name"], **builder["kwargs"])
    if kind == "nas_child":
        from pluto.decisions.ops.config import SpaceConfig
        from pluto.decisions.ops.derive import build_child

        return build_child(SpaceConfig.from_dict(builder["space"]), builder["architecture"])
    raise ConfigError(f"this file holds a {builder.get('class', 'user-defined')} model, which pluto cannot build "
                      "by itself; build the original (unpruned, float) model and pass it: pluto.load(path, model=...)")


def _resize(model: nn.Module, structure: dict[str, Any]) -> None:
    """Give every layer and tensor of the freshly built ``model`` the saved (pruned) sizes."""
    modules = dict(model.named_modules())
    for name, spec in structure["layers"].items():
        if name not in modules:
            raise ConfigError(f"the saved model has a layer {name!r} that the built model lacks; pass the same "
                              "architecture it was saved from")
        for attr, value in spec.items():
            if attr != "type":
                setattr(modules[name], attr, tuple(value) if isinstance(value, list) else value)
    for name, spec in structure["tensors"].items():
        owner_name, _, attr = name.rpartition(".")
        owner = modules.get(owner_name)
        current = None if owner is None else getattr(owner, attr, None)
        if not isinstance(current, Tensor):
            raise ConfigError(f"the saved model has a tensor {name!r} that the built model lacks; pass the same "
                              "architecture it was saved from")
        shape = torch.Size(spec["shape"])
        if current.shape == shape:
            continue
        new = torch.ones(shape, dtype=current.dtype, device=current.device)  # overwritten by the saved weights
        if isinstance(current, nn.Parameter):
            setattr(owner, attr, nn.Parameter(new, current.requires_grad))
        else:
            owner._buffers[attr] = new


def load(path: str | os.PathLike, model: nn.Module | None = None, map_location: str | torch.device = "cpu"
         ) -> nn.Module:
    """Restore a model written by :func:`save`: architecture, (pruned) shapes, bit-widths and weights; in eval mode.

    ``model``: an instance of the original, unpruned float architecture, needed only for models
    pluto's registry cannot build; it is modified in place and returned.
    """
    from pluto.engine.checkpoint import load_checkpoint

    payload = load_checkpoint(path, map_location=map_location)
    structure = _structure(payload, path)
    model = model if model is not None else _build(structure["builder"])
    if structure.get("skipped_blocks"):  # residual blocks the depth decisions removed (pluto.decisions.depth)
        from pluto.decisions.depth import restore_skipped

        restore_skipped(model, structure["skipped_blocks"])
    _resize(model, structure)
    state = payload["model"]
    try:
        if structure["quantization"]:
            from pluto.decisions.bits import prepare_from_state_dict

            prepare_from_state_dict(model, state)
        else:
            model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"{path} does not fit the rebuilt model ({str(exc).splitlines()[0]}); "
                          "pass the architecture it was saved from") from exc
    return model.to(map_location).eval()


__all__ = ["save", "load", "describe", "builder_of", "read_structure", "FORMAT", "VERSION"]
