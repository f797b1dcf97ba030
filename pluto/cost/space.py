"""What a table must cover: a profiling space, read from a YAML file in ``configs/space/``.

A space lists the model families a table will be asked to price, and the profiler measures every
op configuration they can produce, on a channel grid wide enough for pruned widths::

    name: fmnist_cpu
    channel_grid: [4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]   # interpolation knots
    min_width: 0.25            # pruning keeps >= 25% of any layer's channels: cover that range
    models:                    # registry names (pluto.models.create_model) or torchvision ctors
      - {name: small_cnn, input_shape: [1, 28, 28], kwargs: {width: 1.0}}
      - {torchvision: mobilenet_v2, input_shape: [3, 32, 32], kwargs: {width_mult: 0.5}}
    mbconv:                    # the MobileNetV2-style NAS space (pluto.cost.samples.MBConvSpace)
      {in_channels: 1, input_size: 28, stem: 16, stages: [[24, 2, 2], [32, 3, 2]], kernels: [3, 5, 7]}
    resnet: [{in_channels: 1, input_size: 28}]   # pruned ResNet-18 (pluto.cost.samples.PrunedResNet)
    modules: "pluto.decisions.ops.space:profile_modules"  # optional: callable -> [(nn.Module, input_shape)]
    calibration: {mbconv: 4, resnet: 2, models: true, seed: 0}   # whole networks for the fit

For every op the grid keeps the knots inside [min_width * nominal, nominal], the knot just below,
and the nominal count itself; conv/linear entries are the product cin x cout of those points.
Runtimes run channel counts that are not multiples of ``align`` (8) on slower kernels (2-3x for
ORT's depthwise convs): with ``unaligned: true`` each knot k also gets k - 1, and the table keeps
separate grids for aligned and unaligned counts.
The model's input channels and the classifier's outputs are never pruned, so not gridded.
"""
from __future__ import annotations

import importlib
import random
from dataclasses import dataclass, field
from pathlib import Path

import torchvision
import yaml
from torch import nn

from pluto.cost.ops import MATRIX_KINDS, OpSpec, extract_ops
from pluto.cost.samples import MBConvNet, MBConvSpace, PrunedResNet, RESNET18_WIDTHS, random_mbconv, random_resnet
from pluto.errors import ConfigError

DEFAULT_GRID = (4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
Network = tuple[str, nn.Module, tuple[int, ...]]


@dataclass
class ProfileSpace:
    """A parsed space config; ``networks()`` are its nominal models, ``unit_ops()`` the entries to measure."""

    name: str
    channel_grid: tuple[int, ...] = DEFAULT_GRID
    min_width: float = 0.25
    align: int = 8
    unaligned: bool = False
    models: list[dict] = field(default_factory=list)
    mbconv: list[dict] = field(default_factory=list)
    resnet: list[dict] = field(default_factory=list)
    modules: str | None = None
    calibration: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> "ProfileSpace":
        path = Path(path)
        if not path.exists():
            known = sorted(p.name for p in Path("configs/space").glob("*.yaml")) if Path("configs/space").exists() else []
            raise ConfigError(f"no space config at {path}; pass a YAML file such as configs/space/<name>.yaml "
                              f"(found: {', '.join(known) or 'none'})")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        return cls.from_dict(data, default_name=path.stem)

    @classmethod
    def from_dict(cls, data: dict, default_name: str = "space") -> "ProfileSpace":
        known = {"name", "channel_grid", "min_width", "align", "unaligned", "models", "mbconv", "resnet", "modules", "calibration"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown space keys {sorted(unknown)}; valid keys: {sorted(known)}")
        as_list = lambda v: [] if v is None else (v if isinstance(v, list) else [v])  # noqa: E731
        space = cls(name=data.get("name", default_name),
                    channel_grid=tuple(sorted(int(c) for c in data.get("channel_grid", DEFAULT_GRID))),
                    min_width=float(data.get("min_width", 0.25)), align=int(data.get("align", 8)),
                    unaligned=bool(data.get("unaligned", False)), models=as_list(data.get("models")),
                    mbconv=as_list(data.get("mbconv")), resnet=as_list(data.get("resnet")),
                    modules=data.get("modules"), calibration=data.get("calibration") or {}, source=data)
        if not 0 < space.min_width <= 1:
            raise ConfigError(f"min_width must be in (0, 1], got {space.min_width}")
        return space

    # ---- networks -------------------------------------------------------------------------
    def _model(self, spec: dict) -> Network:
        shape = tuple(spec.get("input_shape", (1, 28, 28)))
        kwargs = dict(spec.get("kwargs", {}))
        if "torchvision" in spec:
            ctor = getattr(torchvision.models, spec["torchvision"], None)
            if ctor is None:
                raise ConfigError(f"torchvision.models has no {spec['torchvision']!r}")
            from pluto.models import adapt_stem
            model = adapt_stem(ctor(weights=None, num_classes=spec.get("num_classes", 10), **kwargs), shape[0], shape[-1])
            label = spec["torchvision"]
        elif "name" in spec:
            from pluto.models import create_model
            model = create_model(spec["name"], num_classes=spec.get("num_classes", 10), in_channels=shape[0],
                                 input_size=shape[-1], **kwargs)
            label = spec["name"]
        else:
            raise ConfigError(f"space model entry {spec} needs 'name' (registry) or 'torchvision' (constructor)")
        suffix = ",".join(f"{k}={v}" for k, v in kwargs.items())
        return f"{label}[{'x'.join(map(str, shape))}{',' + suffix if suffix else ''}]", model.eval(), shape

    def _mbconv_spaces(self) -> list[MBConvSpace]:
        return [MBConvSpace.from_dict({"min_width": self.min_width, **spec}) for spec in self.mbconv]

    def networks(self) -> list[Network]:
        """Nominal (unpruned) networks whose ops, with the channel ranges pruning allows, define the grid."""
        nets = [self._model(spec) for spec in self.models]
        for space in self._mbconv_spaces():
            shape = (space.in_channels, space.input_size, space.input_size)
            # one supernet-shaped model per (kernel, expansion) so every block choice appears at every position
            for k in space.kernels:
                for e in space.expansions:
                    blocks = [b for b in space.max_blocks() if b.kernel == k and b.hidden == b.cin * e]
                    nets.append((f"mbconv[k{k},e{e},{shape[-1]}]", MBConvNet(space.stem, blocks, space.head,
                                                                             space.in_channels).eval(), shape))
        for spec in self.resnet:
            shape = (spec.get("in_channels", 1), spec.get("input_size", 28), spec.get("input_size", 28))
            widths = list(spec.get("widths", RESNET18_WIDTHS))
            nets.append((f"resnet18_pruned[{shape[-1]}]",
                         PrunedResNet(widths, [w for w in widths for _ in (0, 1)], shape[0]).eval(), shape))
        if self.modules:
            nets.extend(self._plugin_networks())
        return nets

    def _plugin_networks(self) -> list[Network]:
        module_name, _, fn_name = self.modules.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), fn_name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"space 'modules: {self.modules}' cannot be imported ({exc}); give 'package.module:function' "
                              "returning [(nn.Module, input_shape), ...]") from exc
        out = []
        for i, (module, shape) in enumerate(fn()):
            out.append((f"{fn_name}[{i}]", module.eval(), tuple(shape)[-3:]))
        return out

    def calibration_networks(self) -> list[Network]:
        """A few whole networks of the space (nominal models + random subnets) for the fusion/overhead fit."""
        cfg = {"mbconv": 4, "resnet": 2, "models": True, "seed": 0, "aligned": False, **self.calibration}
        rng = random.Random(cfg["seed"])
        nets = [self._model(spec) for spec in self.models] if cfg["models"] else []
        for space in self._mbconv_spaces():
            shape = (space.in_channels, space.input_size, space.input_size)
            for i in range(cfg["mbconv"]):
                # nominal / pruned (any width) / pruned to multiples of `align` (with aligned: true)
                kind = i % 3 if cfg["aligned"] else i % 2
                align = self.align if kind == 2 else 1
                nets.append((f"mbconv_sample{i}[{shape[-1]}]",
                             random_mbconv(rng, space, prune=kind > 0, align=align).eval(), shape))
        for spec in self.resnet:
            shape = (spec.get("in_channels", 1), spec.get("input_size", 28), spec.get("input_size", 28))
            for i in range(cfg["resnet"]):
                align = self.align if cfg["aligned"] and i % 2 == 1 else 1
                nets.append((f"resnet_sample{i}[{shape[-1]}]",
                             random_resnet(rng, shape[0], self.min_width, align).eval(), shape))
        return nets

    # ---- entries --------------------------------------------------------------------------
    def _points(self, nominal: int, prunable: bool) -> set[int]:
        if not prunable:
            return {nominal}
        lo = max(1, int(self.min_width * nominal))
        inside = {g for g in self.channel_grid if lo <= g <= nominal}
        below = [g for g in self.channel_grid if g < lo]
        points = inside | {nominal} | ({below[-1]} if below else {lo})
        if self.unaligned:  # the slow-kernel regime of counts that are not multiples of ``align``
            points |= {p - 1 for p in points if p > self.align and p % self.align == 0}
        return points

    def unit_ops(self) -> list[OpSpec]:
        """Every distinct op configuration to measure (precision-free), sorted for stable, resumable order."""
        cins: dict[tuple, set[int]] = {}
        couts: dict[tuple, set[int]] = {}
        template: dict[tuple, OpSpec] = {}
        for label, model, shape in self.networks():
            ops = extract_ops(model, shape)
            for i, op in enumerate(ops):
                groups = op.groups if op.kind == "conv" and op.groups > 1 else 1
                key = (op.kind, op.kernel, op.stride, op.hw, op.act, op.bn, op.variant, groups)
                template.setdefault(key, op)
                first_conv = i == 0 and op.cin == shape[0]
                classifier = op.kind == "linear" and i == len(ops) - 1
                cin = op.cin // groups if op.kind == "conv" else op.cin
                if groups > 1:  # a grouped conv has entries of its own (same groups; cin per group on the grid):
                    # onnxruntime runs it 2-3x slower than the dense conv of the same MACs (RegNet, 2026-12-07)
                    couts.setdefault(key, set()).update(p for p in self._points(op.cout, True) if p % groups == 0)
                    cins.setdefault(key, set()).update(p // groups for p in self._points(op.cin, not first_conv)
                                                       if p % groups == 0)
                    continue
                couts.setdefault(key, set()).update(self._points(op.cout, not classifier))
                if op.kind in MATRIX_KINDS:
                    cins.setdefault(key, set()).update(self._points(cin, not first_conv))
        out = []
        for key in sorted(template, key=str):
            op, groups = template[key], key[-1]
            for cout in sorted(couts[key]):
                for cin in sorted(cins.get(key, {cout})):
                    spec = op.with_channels(cin * groups, cout)
                    out.append(OpSpec(spec.kind, f"{op.kind}_{len(out)}", spec.cin, spec.cout, op.kernel, op.stride,
                                      spec.groups if op.kind == "dwconv" or groups > 1 else 1, op.hw, op.act, op.bn,
                                      op.variant))
        return out


def load_space(path: str | Path) -> ProfileSpace:
    return ProfileSpace.load(path)


__all__ = ["ProfileSpace", "load_space", "DEFAULT_GRID"]
