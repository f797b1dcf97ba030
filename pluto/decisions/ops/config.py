"""The shape of a NAS search space, as a plain dataclass (or dict, or preset name).

A space is a stem, a list of stages and a head. Each stage has an output width, a
*maximum* depth (number of choice blocks) and the stride of its first block. Every
block is a choice between candidate ops; a block whose input and output shapes agree
(not the first of a stage, unless stride 1 and equal widths) may also choose ``skip``,
so depth shrinks ("skip-to-shrink", as in ProxylessNAS / FBNet).

Two families:

- ``mbconv``: MobileNetV2 inverted-residual blocks, candidates ``kernels x expansions``
  (1x1 expand, kxk depthwise, 1x1 project, residual add when shapes allow).
- ``resnet``: ResNet basic blocks (two kxk convs), candidates ``kernels x widths``
  where a width multiplier scales the block's inner channels.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping, Sequence

from pluto.errors import ConfigError

FAMILIES = ("mbconv", "resnet")


@dataclass(frozen=True)
class StageSpec:
    """One stage: ``depth`` choice blocks of ``width`` output channels; the first has ``stride``."""

    width: int
    depth: int
    stride: int = 1


@dataclass(frozen=True)
class SpaceConfig:
    """Everything that fixes a supernet: input, stem, stages, candidate grid and head.

    Widths are channel counts; ``input_size`` is the square input side in pixels.
    ``kernels`` are the kxk sizes to choose from, ``expansions`` the MBConv expansion
    ratios, ``width_multipliers`` the ResNet inner-width ratios, ``allow_skip`` whether
    shape-preserving blocks may be skipped. ``head_width`` (0 = none) is the 1x1 conv
    before global pooling, as in MobileNetV2's 1280-channel head.
    """

    family: str = "mbconv"
    in_channels: int = 1
    input_size: int = 28
    num_classes: int = 10
    stem_width: int = 16
    stages: tuple[StageSpec, ...] = (
        StageSpec(24, 2, 2), StageSpec(32, 3, 2), StageSpec(64, 3, 2), StageSpec(96, 2, 1),
    )
    kernels: tuple[int, ...] = (3, 5, 7)
    expansions: tuple[int, ...] = (3, 4, 6)
    width_multipliers: tuple[float, ...] = (0.5, 1.0)
    allow_skip: bool = True
    head_width: int = 256
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"unknown search-space family {self.family!r}; use one of {', '.join(FAMILIES)}")
        if not self.stages:
            raise ConfigError("a search space needs at least one stage; add e.g. stages: [{width: 24, depth: 2, stride: 2}]")
        for i, stage in enumerate(self.stages):
            if stage.width < 1 or stage.depth < 1 or stage.stride not in (1, 2):
                raise ConfigError(f"stage {i} ({stage}) is invalid: width and depth must be >= 1 and stride 1 or 2")
        for k in self.kernels:
            if k < 1 or k % 2 == 0:
                raise ConfigError(f"kernel size {k} is invalid: use odd sizes such as 3, 5, 7")
        if not self.kernels or (self.family == "mbconv" and not self.expansions) or \
                (self.family == "resnet" and not self.width_multipliers):
            raise ConfigError(f"the {self.family} space has an empty candidate grid; give at least one kernel and "
                              f"{'expansion' if self.family == 'mbconv' else 'width multiplier'}")
        if min(self.expansions, default=1) < 1 or min(self.width_multipliers, default=1) <= 0:
            raise ConfigError("expansions must be >= 1 and width multipliers > 0")

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """Batch-1 NCHW input shape, the convention of ``pluto.cost``."""
        return (1, self.in_channels, self.input_size, self.input_size)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SpaceConfig":
        """Build from a plain (e.g. YAML/Hydra) mapping; ``stages`` as dicts or [width, depth, stride] lists."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known - {"preset"}
        if unknown:
            raise ConfigError(f"unknown search-space keys {sorted(unknown)}; valid keys: {sorted(known)}")
        base = space_config(data["preset"]) if "preset" in data else cls()
        values = {k: v for k, v in data.items() if k != "preset"}
        if "stages" in values:
            values["stages"] = tuple(_stage(s) for s in values["stages"])
        for key in ("kernels", "expansions", "width_multipliers"):
            if key in values:
                values[key] = tuple(values[key])
        return replace(base, **values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stage(spec: Any) -> StageSpec:
    if isinstance(spec, StageSpec):
        return spec
    if isinstance(spec, Mapping):
        return StageSpec(**spec)
    if isinstance(spec, Sequence) and not isinstance(spec, str) and 2 <= len(spec) <= 3:  # also a YAML list
        return StageSpec(*spec)
    raise ConfigError(f"cannot read stage {spec!r}; write it as {{width: 24, depth: 2, stride: 2}} or [24, 2, 2]")


_RESNET_STAGES = (StageSpec(32, 2, 1), StageSpec(64, 2, 2), StageSpec(128, 2, 2), StageSpec(256, 2, 2))

PRESETS: dict[str, SpaceConfig] = {
    # MobileNetV2/ProxylessNAS-style: 28 -> 14 -> 7 -> 4 (Fashion-MNIST), 32 -> 16 -> 8 -> 4 (CIFAR)
    "mbconv_28": SpaceConfig(),
    "mbconv_32": SpaceConfig(in_channels=3, input_size=32, stem_width=24,
                             stages=(StageSpec(24, 2, 1), StageSpec(32, 3, 2), StageSpec(64, 3, 2),
                                     StageSpec(96, 2, 1), StageSpec(160, 2, 2)), head_width=320),
    # ResNet-18-like: four stages of (up to) two basic blocks
    "resnet_28": SpaceConfig(family="resnet", stem_width=32, stages=_RESNET_STAGES, kernels=(3, 5), head_width=0),
    "resnet_32": SpaceConfig(family="resnet", in_channels=3, input_size=32, stem_width=32, stages=_RESNET_STAGES,
                             kernels=(3, 5), head_width=0),
    # a tiny space for tests and minute-long demos
    "tiny_28": SpaceConfig(stem_width=8, stages=(StageSpec(16, 2, 2), StageSpec(24, 2, 2)),
                           kernels=(3, 5), expansions=(3, 6), head_width=0),
}


def space_config(spec: "SpaceConfig | Mapping[str, Any] | str | None" = None, **overrides: Any) -> SpaceConfig:
    """Resolve a preset name, dict or config (``None`` = ``mbconv_28``), then apply keyword overrides."""
    if spec is None:
        config = PRESETS["mbconv_28"]
    elif isinstance(spec, SpaceConfig):
        config = spec
    elif isinstance(spec, str):
        if spec not in PRESETS:
            raise ConfigError(f"unknown search-space preset {spec!r}; presets: {', '.join(sorted(PRESETS))}")
        config = PRESETS[spec]
    elif isinstance(spec, Mapping):
        config = SpaceConfig.from_dict(spec)
    else:
        raise ConfigError(f"cannot build a search space from {type(spec).__name__}; pass a preset name, dict or SpaceConfig")
    return SpaceConfig.from_dict({**config.to_dict(), **overrides}) if overrides else config


__all__ = ["SpaceConfig", "StageSpec", "PRESETS", "space_config", "FAMILIES"]
