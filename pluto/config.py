"""The typed schema of a run's configuration: every key, its type, range or choices, and its default.

This module is the one home of defaults: the YAML files in ``configs/`` spell the same values out
for readers (a test keeps them equal), and :func:`validate_config` fills any key a composed config
lacks from here, so code never needs a ``cfg.get("key", default)`` of its own.

``validate_config(cfg)`` checks a composed config (Hydra's ``DictConfig`` or a plain dict) before
any work starts and returns the complete, typed config; the first problem raises
:class:`~pluto.errors.ConfigError` naming the key, what it holds, what it must hold and, for a
typo, the closest valid key. ``check_overrides`` does the same for Hydra override strings before
Hydra composes them (Hydra's own messages for unknown keys are stack traces).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from pluto.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"
GROUPS = ("model", "data", "task", "trainer", "hw", "constraints", "compress", "logger")
from pluto.cost.metrics import METRICS as CONSTRAINT_METRICS, TABLE_METRICS  # noqa: E402  the one vocabulary
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")
SUPPORTED_BITS = (4, 8, 16, 32)
# keys whose change does not alter what a resumed run computes (only where/how it runs and logs)
RESUME_SAFE_KEYS = ("trainer.resume", "trainer.resume_allow_changes", "trainer.device", "trainer.threads",
                    "trainer.checkpoint_every", "trainer.log_every", "logger.tensorboard")


def _opt(default: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
         hi_open: bool = False, choices: tuple | None = None, pattern: str | None = None, doc: str = "") -> Any:
    """A schema field: default, inclusive/exclusive bounds, allowed values or a regex, and a one-line meaning."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "choices": choices, "pattern": pattern,
            "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# ---- groups ------------------------------------------------------------------------------------
@dataclass
class TrainerConfig:
    epochs: int = _opt(10, 1, 100_000, doc="epochs of plain training (compression runs use compress.epochs)")
    batch_size: int = _opt(128, 1, 1 << 20, doc="images per step")
    optimizer: str = _opt("sgd", choices=("sgd", "adamw"))
    lr: float = _opt(0.05, 0, 100, lo_open=True, doc="weight learning rate")
    weight_decay: float = _opt(5.0e-4, 0, 1)
    scheduler: str = _opt("cosine", choices=("cosine", "constant"))
    warmup_steps: int = _opt(100, 0, 10**9)
    label_smoothing: float = _opt(0.0, 0, 1, hi_open=True)
    device: str = _opt("auto", pattern=r"auto|cpu|cuda(:\d+)?", doc="auto | cpu | cuda | cuda:N")
    threads: int = _opt(0, 0, 4096, doc="torch CPU threads; 0 = torch's default")
    resume: bool = _opt(False, doc="continue outputs/<run_name>/last.pt after a kill")
    resume_allow_changes: list = _opt([], doc="config keys allowed to differ from the run being resumed")
    checkpoint_every: int = _opt(200, 1, 10**9, doc="batches between checkpoints")
    log_every: int = _opt(20, 1, 10**9, doc="batches between logged scalars")
    sync_bn: bool = _opt(False, doc="torchrun runs: BatchNorm statistics over the global batch (all ranks)")
    compile: str = _opt("none", choices=("none", "default", "reduce-overhead", "max-autotune", "step-graph"),
                        doc="torch.compile the model of the warm-up and search steps (reduce-overhead: + CUDA graphs; "
                            "step-graph: the whole training step as one CUDA graph)")


@dataclass
class HwConfig:
    table: Optional[str] = _opt("latency_tables/cpu_ort_xeon_amx", doc="latency table folder; null = analytic costs only")
    precision: str = _opt("int8", choices=PRECISIONS, doc="precision of layers the search does not quantize")
    measure: str = _opt("auto", choices=("auto", "off"),
                        doc="auto: measure on the table's chip when reachable (this machine or hw.runner)")
    runner: Optional[str] = _opt(None, doc="remote measurement command template, e.g. 'ssh board ./bench {onnx}'")
    measure_samples: int = _opt(50, 5, 100_000, doc="timed samples per measurement round")
    measure_rounds: int = _opt(3, 1, 1000, doc="rounds per measurement (median of round medians)")
    measure_level: bool = _opt(False, doc="in-loop measurements (correction, landing) at the table's level: the "
                                          "reference kernels timed in the same rounds divide out the machine's "
                                          "load (a shared VM); the final verdict stays the raw measurement")
    adapt: str = _opt("auto", choices=("auto", "adapt", "off"),
                      doc="a CPU table made on another machine, before the search: auto = use a table beside it "
                          "profiled on this machine kind if one prices the model, else adapt it here (cached); "
                          "adapt = always adapt the named table; off = use it as it is")


@dataclass
class LoggerConfig:
    tensorboard: bool = _opt(True)


@dataclass
class KdConfig:
    temperature: float = _opt(4.0, 0, 1000, lo_open=True)
    alpha: float = _opt(0.7, 0, 1, doc="weight of the KD term")
    teacher_precision: str = _opt("auto", choices=("auto", "fp32", "bf16", "fp16"),
                                  doc="the teacher forward's autocast dtype; auto: bf16 on CPUs with native bf16 "
                                      "and GPUs of compute capability >= 8, else fp32")


@dataclass
class PhaseEpochs:
    warmup: int = _opt(2, 0, 100_000)
    search: int = _opt(3, 0, 100_000)
    finetune: int = _opt(2, 0, 100_000)


@dataclass
class TemperatureConfig:
    initial: float = _opt(5.0, 0, 1e6, lo_open=True)
    final: float = _opt(0.5, 0, 1e6, lo_open=True)


@dataclass
class LagrangianSection:
    eta: float = _opt(0.05, 0, 1e6, lo_open=True, doc="dual step size")
    rho: float = _opt(1.0, 0, 1e6)
    update_every: int = _opt(1, 1, 10**9)
    warmup: int = _opt(0, 0, 10**9)
    lambda_init: float = _opt(0.0, 0, 1e12)
    lambda_max: float = _opt(100.0, 0, 1e12, lo_open=True)
    kp: float = _opt(2.0, 0, 1e6, doc="proportional gain of the price (PI multipliers); 0 = plain dual ascent")


@dataclass
class NoCompressConfig:
    name: str = _opt("none", choices=("none",))


@dataclass
class JointCompressConfig:
    name: str = _opt("joint", choices=("joint",))
    prune: bool = _opt(True)
    quantize: bool = _opt(True)
    depth: bool = _opt(False, doc="a keep gate per residual block with an identity shortcut (pluto.decisions.depth)")
    depth_init_keep: float = _opt(0.75, 0, 1, lo_open=True, hi_open=True,
                                  doc="block gates' starting keep-probability (every block kept at the start)")
    depth_lr_scale: float = _opt(10.0, 0, 1000, lo_open=True,
                                 doc="block logits' Adam lr = decision_lr x this (a short search can flip a block)")
    depth_init_spread: float = _opt(1.0, 0, 100, doc="block logits spread +-this by how much each branch changes "
                                                     "the residual stream")
    bits: list = _opt([4, 8], doc="candidate bit-widths, each one of 4, 8, 16, 32")
    distill: bool = _opt(True)
    init_from: Optional[str] = _opt(None, doc="trained weights to start from")
    teacher: Optional[str] = _opt("self", doc="self | none | registry name | checkpoint path")
    kd: KdConfig = field(default_factory=KdConfig)
    epochs: PhaseEpochs = field(default_factory=PhaseEpochs)
    decision_lr: float = _opt(0.01, 0, 100, lo_open=True)
    search_lr_scale: float = _opt(0.5, 0, 100, lo_open=True)
    finetune_lr_scale: float = _opt(0.2, 0, 100, lo_open=True)
    gate_init_keep: float = _opt(0.95, 0, 1, lo_open=True, hi_open=True)
    gate_init: str = _opt("l1", choices=("l1", "l2", "bn", "none"))
    gate_init_spread: float = _opt(2.0, 0, 100)
    gate_mode: str = _opt("ste", choices=("ste", "soft", "hard"))
    bits_init: str = _opt("reference", pattern=r"reference|uniform|\d+",
                          doc="where bit decisions start: reference (the cheapest uncompressed deployment) | "
                              "uniform | a candidate bit-width")
    bits_init_p: float = _opt(0.9, 0, 1, lo_open=True, hi_open=True, doc="probability of the starting bit-width")
    supernet_warmup_mode: str = _opt("sample", choices=("sample", "soft", "sandwich"),
                                     doc="NAS warm-up: sample (one random path per step, SPOS) | soft (the mixture) | "
                                         "sandwich (biggest + smallest + sandwich_random random children per step)")
    sandwich_random: int = _opt(2, 0, 100, doc="random children per sandwich warm-up step, besides the extremes")
    supernet_search_mode: str = _opt("soft", choices=("soft", "gumbel", "sample"))
    temperature: TemperatureConfig = field(default_factory=TemperatureConfig)
    lagrangian: LagrangianSection = field(default_factory=LagrangianSection)
    export: bool = _opt(True)
    measure_every: str = _opt("auto", pattern=r"auto|\d+",
                              doc="search steps between measured candidates: auto (~10 per search) | N | 0 (off)")
    correction_smoothing: float = _opt(0.5, 0, 1, lo_open=True, doc="EMA weight of each new measured/predicted ratio")
    polish_precision: bool = _opt(True, doc="with the landing: move fp32/fp16 layers to int8 (else fp16) when the chip "
                                            "measures the model faster that way")
    land: bool = _opt(True, doc="after hardening, move widths until the measured cost is in land_band x target")
    land_band: list = _opt([0.93, 1.0], doc="[low, high] fractions of the target the measured cost must land in")
    land_measurements: int = _opt(16, 1, 1000, doc="measurements the landing may spend")


@dataclass
class FashionMnistData:
    name: str = _opt("fashion_mnist", choices=("fashion_mnist",))
    root: Optional[str] = _opt(None, doc="folder with the four *-ubyte.gz files; null = the Debian package")
    train_limit: Optional[int] = _opt(None, 1, 10**12, doc="use only the first N training images; null = all")
    test_limit: Optional[int] = _opt(None, 1, 10**12)


@dataclass
class Cifar10Data:
    name: str = _opt("cifar10", choices=("cifar10",))
    root: str = _opt("???", doc="folder containing cifar-10-batches-py")
    train_limit: Optional[int] = _opt(None, 1, 10**12)
    test_limit: Optional[int] = _opt(None, 1, 10**12)


@dataclass
class ImageFolderData:
    name: str = _opt("imagefolder", choices=("imagefolder",))
    root: str = _opt("???", doc="folder with train/<class>/* and val/<class>/*")
    input_size: int = _opt(224, 8, 4096)
    train_limit: Optional[int] = _opt(None, 1, 10**12)
    test_limit: Optional[int] = _opt(None, 1, 10**12)


@dataclass
class SyntheticData:
    name: str = _opt("synthetic", choices=("synthetic",))
    num_samples: int = _opt(512, 1, 10**7)
    num_classes: int = _opt(10, 2, 100_000)
    in_channels: int = _opt(1, 1, 64)
    input_size: int = _opt(28, 8, 1024)
    train_limit: Optional[int] = _opt(None, 1, 10**12)
    test_limit: Optional[int] = _opt(None, 1, 10**12)


@dataclass
class FashionMnistSRData:
    name: str = _opt("fashion_mnist_sr", choices=("fashion_mnist_sr",))
    root: Optional[str] = _opt(None, doc="folder with the four *-ubyte.gz files; null = the Debian package")
    scale: int = _opt(2, 1, 28, doc="upscaling factor: divides 28 and equals model.scale")
    downsample: str = _opt("area", choices=("area", "bicubic"))
    train_limit: Optional[int] = _opt(None, 1, 10**12)
    test_limit: Optional[int] = _opt(None, 1, 10**12)


@dataclass
class ImageFolderSRData:
    name: str = _opt("imagefolder_sr", choices=("imagefolder_sr",))
    root: str = _opt("???", doc="folder with train/** and val/** images")
    scale: int = _opt(2, 1, 16, doc="upscaling factor; equals model.scale")
    crop: int = _opt(64, 2, 4096, doc="target crop in px, a multiple of scale")
    in_channels: int = _opt(3, choices=(1, 3))
    downsample: str = _opt("area", choices=("area", "bicubic"))
    train_limit: Optional[int] = _opt(None, 1, 10**12)
    test_limit: Optional[int] = _opt(None, 1, 10**12)


@dataclass
class ClassificationTask:
    name: str = _opt("classification", choices=("classification",))


@dataclass
class SRTask:
    name: str = _opt("sr", choices=("sr",))
    kd_alpha: float = _opt(0.5, 0, 1, doc="weight of the teacher-output term in the distillation loss")
    kd_loss: str = _opt("l1", choices=("l1", "l2"))
    loss_scale: float = _opt(100.0, 0, 1e6, lo_open=True, doc="training losses x this")
    border: int = _opt(0, 0, 1024, doc="pixels shaved off each side before PSNR")
    ssim: bool = _opt(True)
    hint_layers: list = _opt([], doc="layers whose outputs get attention-transfer hints, e.g. [body_end] for edsr")
    hint_weight: float = _opt(0.0, 0, 1e6, doc="weight of the hint term in every phase with a teacher; 0 = off")


DATA_SCHEMAS = {"fashion_mnist": FashionMnistData, "cifar10": Cifar10Data, "imagefolder": ImageFolderData,
                "synthetic": SyntheticData, "fashion_mnist_sr": FashionMnistSRData, "imagefolder_sr": ImageFolderSRData}
TASK_SCHEMAS = {"classification": ClassificationTask, "sr": SRTask}
COMPRESS_SCHEMAS = {"none": NoCompressConfig, "joint": JointCompressConfig}
# constructor arguments of registered models that take numbers, with their ranges
MODEL_NUMBERS = {"width": (0.0, 64.0, True), "dropout": (0.0, 1.0, False)}


@dataclass
class RunConfig:
    """The top level: which groups, plus the run's name and seed."""

    run_name: str = _opt("small_cnn-fashion_mnist-joint", pattern=r"(?!.*\.\.)[^\x00]+",
                         doc="folder name under outputs/ (no '..')")
    seed: int = _opt(0, 0, 2**63 - 1)


# ---- checking ----------------------------------------------------------------------------------
def _closest(name: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f"did you mean {match[0]!r}? " if match else ""
    if len(valid) > 12:
        near = difflib.get_close_matches(name, valid, n=8, cutoff=0.0)
        return f"{hint}nearby valid keys: {', '.join(near)} (all keys: pluto/config.py)"
    return f"{hint}valid keys: {', '.join(sorted(valid))}"


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """(base type, optional) of an annotation such as ``Optional[int]``."""
    if typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


def _check_value(path: str, value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    base, optional = _unwrap(hint)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{path} must not be null; {_expect(base, meta)} (default: see pluto/config.py)")
    if isinstance(value, str) and value == "???":
        raise ConfigError(f"{path} is required here: set {path}=... ({meta.get('doc') or _expect(base, meta)})")
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {_show(value)}; write {path}=true or {path}=false")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer() and math.isfinite(value):
                value = int(value)
            else:
                raise ConfigError(f"{path} must be a whole number, got {_show(value)}; {_expect(base, meta)}")
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {_show(value)}; {_expect(base, meta)}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{path} must be a finite number, got {value}; {_expect(base, meta)}")
    elif base is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{path} must be a string, got {_show(value)}; {_expect(base, meta)}")
        value = str(value)
        if "${" in value:
            raise ConfigError(f"{path}={value!r} holds an unresolved ${{...}} reference; write the value itself")
    _check_range(path, value, base, meta)
    return value


def _expect(base: Any, meta: Mapping[str, Any], side: str = "") -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(str(c) for c in meta["choices"])
    if meta.get("pattern"):
        return meta.get("doc") or f"matching {meta['pattern']}"
    lo, hi = meta.get("lo"), meta.get("hi")
    kind = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}.get(base, str(base))
    bounds = []
    if lo is not None:
        bounds.append(f"{'>' if meta.get('lo_open') else '>='} {_fmt(lo)}")
    if hi is not None and (side != "lo" or lo is None):
        bounds.append(f"{'<' if meta.get('hi_open') else '<='} {_fmt(hi)}")
    if side == "hi" and lo is not None:
        bounds = bounds[1:] if len(bounds) > 1 else bounds
    return f"expected {kind}" + (f" {' and '.join(bounds)}" if bounds else "")


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


def _check_range(path: str, value: Any, base: Any, meta: Mapping[str, Any]) -> None:
    choices, pattern = meta.get("choices"), meta.get("pattern")
    if choices is not None and value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{path}={value!r} is not supported{hint}; use one of {', '.join(map(str, choices))}")
    if pattern is not None and not re.fullmatch(pattern, value):
        raise ConfigError(f"{path}={value!r} is not valid; {meta.get('doc') or 'expected ' + pattern}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if base in (int, float) and (lo is not None or hi is not None):
        below = lo is not None and (value <= lo if meta.get("lo_open") else value < lo)
        above = hi is not None and (value >= hi if meta.get("hi_open") else value > hi)
        if below or above:
            raise ConfigError(f"{path}={value!r} is out of range; {_expect(base, meta, 'lo' if below else 'hi')}"
                              + (f" ({meta['doc']})" if meta.get("doc") else ""))


def _check_section(path: str, value: Any, schema: type) -> dict[str, Any]:
    """A dataclass section: no unknown keys, each value typed and in range, missing keys filled with defaults."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path} must be a mapping of keys to values, got {_show(value)}")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key in value:
        if key not in fields:
            raise ConfigError(f"unknown key {path}.{key}; {_closest(str(key), list(fields))}")
    out: dict[str, Any] = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        hint = hints[name]
        if name in value:
            given = value[name]
        elif f.default is not dataclasses.MISSING:
            given = f.default
        else:
            given = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(hint):
            out[name] = _check_section(sub, given if not dataclasses.is_dataclass(given) else dataclasses.asdict(given),
                                       hint)
        elif hint is list or typing.get_origin(hint) is list:
            if isinstance(given, (str, bytes)) or not isinstance(given, (list, tuple)):
                raise ConfigError(f"{sub} must be a list, got {_show(given)}; write e.g. {sub}=[4,8]")
            out[name] = list(given)
        else:
            out[name] = _check_value(sub, given, hint, f.metadata)
    return out


def _check_variant(path: str, value: Any, schemas: Mapping[str, type], default: str,
                   inert: Mapping[str, type] | None = None) -> dict[str, Any]:
    """A group whose keys depend on its ``name``; ``inert``: per name, a schema whose keys are accepted
    (typo-checked, typed) but dropped, e.g. train.yaml's compress settings under ``compress=none``."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path} must be a mapping, got {_show(value)}")
    name = value.get("name", default)
    if not isinstance(name, str) or name not in schemas:
        close = difflib.get_close_matches(str(name), list(schemas), n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{path}.name={name!r} is unknown{hint}; choose one of {', '.join(schemas)} "
                          f"(select it with {path}=<name>)")
    if inert and name in inert:
        _check_section(path, {k: v for k, v in value.items() if k != "name"}, inert[name])
        return {"name": name}
    return _check_section(path, value, schemas[name])


def _check_model(value: Any) -> dict[str, Any]:
    import inspect

    from pluto.models import list_models
    from pluto.models.registry import _REGISTRY

    if not isinstance(value, Mapping):
        raise ConfigError(f"model must be a mapping with at least model.name, got {_show(value)}")
    name = value.get("name")
    if not isinstance(name, str) or name not in list_models():
        close = difflib.get_close_matches(str(name), list_models(), n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"model.name={name!r} is not a registered model{hint}; choose one of "
                          f"{', '.join(list_models())}")
    params = inspect.signature(_REGISTRY[name]).parameters
    open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    known = [k for k in params if k not in ("num_classes", "in_channels", "input_size")
             and params[k].kind is not inspect.Parameter.VAR_KEYWORD]
    out = {"name": name}
    for key, given in value.items():
        if key == "name":
            continue
        if key in ("num_classes", "in_channels", "input_size"):
            raise ConfigError(f"model.{key} follows the data; set it in the data group (e.g. data.{key}) instead")
        if key not in known and not open_kwargs:
            raise ConfigError(f"unknown key model.{key} for model {name}; {_closest(key, known)}")
        if key in MODEL_NUMBERS and given is not None:
            lo, hi, lo_open = MODEL_NUMBERS[key]
            given = _check_value(f"model.{key}", given, float, {"lo": lo, "hi": hi, "lo_open": lo_open,
                                                                  "hi_open": key == "dropout"})
        elif key == "space":
            from pluto.decisions.ops.config import PRESETS

            given = _check_value("model.space", given, str, {"choices": tuple(PRESETS)})
        elif isinstance(given, float) and not math.isfinite(given):
            raise ConfigError(f"model.{key} must be a finite number, got {given}")
        out[key] = given
    return out


def _check_constraints(value: Any) -> dict[str, Any]:
    if value is None:
        return {m: None for m in CONSTRAINT_METRICS}
    if not isinstance(value, Mapping):
        raise ConfigError(f"constraints must be a mapping of metric to target, got {_show(value)}")
    out: dict[str, Any] = {m: None for m in CONSTRAINT_METRICS}
    for key, target in value.items():
        path = f"constraints.{key}"
        if isinstance(target, Mapping):  # {target: 0.4, metric: latency_ms, name: ...}
            extra = [k for k in target if k not in ("target", "metric", "name")]
            if extra:
                valid = ["target", "metric", "name"]
                raise ConfigError(f"unknown key {path}.{extra[0]}; {_closest(str(extra[0]), valid)}")
            metric = target.get("metric", key)
            if metric not in CONSTRAINT_METRICS:
                raise ConfigError(f"{path}: unknown constraint metric {metric!r}; "
                                  f"{_closest(str(metric), list(CONSTRAINT_METRICS))}")
            out[key] = {"metric": metric, "name": str(target.get("name", key)),
                        "target": _check_value(f"{path}.target", target.get("target"), Optional[float],
                                               {"lo": 0, "hi": 1e18, "lo_open": True})}
            continue
        if key not in CONSTRAINT_METRICS:
            raise ConfigError(f"unknown constraint metric {path}; {_closest(str(key), list(CONSTRAINT_METRICS))} "
                              "(null = unconstrained)")
        if isinstance(target, str) and target.strip().lower().endswith("x"):  # relative: 0.6x the uncompressed cost
            from pluto.optimizer.constraints import relative_targets

            relative_targets({key: target})  # ConfigError for e.g. 'fastx'
            out[key] = target.strip().lower()
            continue
        out[key] = _check_value(path, target, Optional[float], {"lo": 0, "hi": 1e18, "lo_open": True,
                                                                 "doc": f"target in {key.split('_')[-1]}"})
    return out


def _to_container(cfg: Any) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(cfg, (DictConfig, Mapping)):
        raise ConfigError(f"a run config must be a mapping, got {_show(cfg)}")
    try:
        if not isinstance(cfg, DictConfig):
            cfg = OmegaConf.create(dict(cfg))
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except (OmegaConfBaseException, ValueError, TypeError) as exc:
        lines = str(exc).splitlines() or [type(exc).__name__]
        raise ConfigError(f"the config does not resolve: {lines[0]}; check the ${{...}} references, overrides and "
                          "value types") from exc


def validate_config(cfg: Any) -> Any:
    """Check a composed run config and return it complete and typed (a DictConfig); ConfigError on the first problem."""
    from omegaconf import OmegaConf

    raw = _to_container(cfg)
    missing = [g for g in GROUPS if g not in raw and g != "task"]  # task: classification unless given
    if missing:
        raise ConfigError(f"the config lacks the group(s) {', '.join(missing)}; compose it with pluto.train.compose "
                          "or `python -m pluto.train` so configs/train.yaml's defaults apply")
    top = {f.name for f in dataclasses.fields(RunConfig)}
    for key in raw:
        if key not in GROUPS and key not in top:
            raise ConfigError(f"unknown top-level key {key!r}; {_closest(str(key), [*GROUPS, *top])}")
    out: dict[str, Any] = _check_section("", {k: raw[k] for k in top if k in raw}, RunConfig)
    out["model"] = _check_model(raw["model"])
    out["data"] = _check_variant("data", raw["data"], DATA_SCHEMAS, "fashion_mnist")
    out["task"] = _check_variant("task", raw.get("task", {"name": "classification"}), TASK_SCHEMAS, "classification")
    out["trainer"] = _check_section("trainer", raw["trainer"], TrainerConfig)
    out["hw"] = _check_section("hw", raw["hw"], HwConfig)
    out["constraints"] = _check_constraints(raw["constraints"])
    out["compress"] = _check_variant("compress", raw["compress"], COMPRESS_SCHEMAS, "none",
                                     inert={"none": JointCompressConfig})
    out["logger"] = _check_section("logger", raw["logger"], LoggerConfig)
    _check_across(out)
    return OmegaConf.create(out)


def _check_across(cfg: dict[str, Any]) -> None:
    """Rules that tie several keys together."""
    c = cfg["compress"]
    if c["name"] == "joint":
        bits = c["bits"]
        if not bits:
            raise ConfigError("compress.bits is empty; give candidate bit-widths, e.g. compress.bits=[4,8]")
        for b in bits:
            if isinstance(b, bool) or not isinstance(b, int) or b not in SUPPORTED_BITS:
                raise ConfigError(f"compress.bits={bits} holds {b!r}; each bit-width must be one of "
                                  f"{', '.join(map(str, SUPPORTED_BITS))}")
        if len(set(bits)) != len(bits):
            raise ConfigError(f"compress.bits={bits} repeats a bit-width; list each once")
        band = c["land_band"]
        if (not isinstance(band, list) or len(band) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in band)
                or not 0 < band[0] < band[1] <= 2):
            raise ConfigError(f"compress.land_band={band} must be two numbers 0 < low < high <= 2 (fractions of the "
                              "target the measured cost must land in), e.g. compress.land_band=[0.93,1.0]")
        lag = c["lagrangian"]
        if lag["lambda_init"] > lag["lambda_max"]:
            raise ConfigError(f"compress.lagrangian.lambda_init={lag['lambda_init']} exceeds lambda_max="
                              f"{lag['lambda_max']}; lower lambda_init or raise lambda_max")
        if c["epochs"]["search"] == 0 and (c["prune"] or c["quantize"]):
            raise ConfigError("compress.epochs.search=0 with prune or quantize on: nothing would be searched and the "
                              "'compressed' model would be the dense one; give search epochs >= 1")
        if c["distill"] and c["teacher"] is None:
            raise ConfigError("compress.distill=true needs compress.teacher (self, a registry name or a checkpoint); "
                              "or set compress.distill=false")
        for key in ("init_from",):
            path = c[key]
            if path and not Path(path).is_file():
                raise ConfigError(f"compress.{key}={path} is not a file; pass a state dict or run checkpoint (.pt)")
        teacher = c["teacher"]
        if c["distill"] and teacher and teacher not in ("self", "none") and teacher.endswith((".pt", ".pth")) \
                and not Path(teacher).is_file():
            raise ConfigError(f"compress.teacher={teacher} is not a file; pass a checkpoint, a registry name or self")
        for metric in TABLE_METRICS:
            if cfg["constraints"].get(metric) is not None and not cfg["hw"]["table"]:
                raise ConfigError(f"constraints.{metric} is priced by a latency table but hw.table is null; set "
                                  "hw.table=latency_tables/<name> (or hw=<preset>), or drop the constraint")
    for key, con in cfg["constraints"].items():
        if isinstance(con, dict) and con["metric"] in TABLE_METRICS and con["target"] is not None \
                and not cfg["hw"]["table"] and c["name"] != "none":
            raise ConfigError(f"constraints.{key} needs hw.table (a latency table); set hw.table=latency_tables/<name>")
    task = cfg["task"]
    if task["name"] == "sr" and task["hint_weight"] > 0:
        if not task["hint_layers"]:
            raise ConfigError(f"task.hint_weight={task['hint_weight']:g} but task.hint_layers is empty; name the layers "
                              "to distil, e.g. task.hint_layers=[body_end] for edsr, or set task.hint_weight=0")
        if c["name"] != "joint" or not c["distill"]:
            raise ConfigError("task.hint_weight > 0 needs a teacher to take hints from: use compress=joint with "
                              "compress.distill=true, or set task.hint_weight=0")
    table = cfg["hw"]["table"]
    if table and c["name"] != "none" and not Path(table).exists():
        raise ConfigError(f"hw.table={table} does not exist; pick a folder under latency_tables/ or make one with "
                          "`pluto profile --out ...`")
    for key in cfg["trainer"]["resume_allow_changes"]:
        if not isinstance(key, str) or not _is_known_key(key):
            raise ConfigError(f"trainer.resume_allow_changes names {key!r}, which is not a config key; list keys "
                              "such as compress.epochs.finetune")


def _is_known_key(dotted: str) -> bool:
    parts = dotted.split(".")
    if parts[0] in ("run_name", "seed"):
        return len(parts) == 1
    if parts[0] == "model":
        return True
    schemas = {"trainer": [TrainerConfig], "hw": [HwConfig], "logger": [LoggerConfig],
               "data": list(DATA_SCHEMAS.values()), "compress": list(COMPRESS_SCHEMAS.values()),
               "task": list(TASK_SCHEMAS.values())}.get(parts[0])
    if parts[0] == "constraints":
        return len(parts) >= 2
    if schemas is None:
        return False
    return any(_path_in(schema, parts[1:]) for schema in schemas)


def _path_in(schema: type, parts: list[str]) -> bool:
    if not parts:
        return True
    hints = typing.get_type_hints(schema)
    if parts[0] not in hints:
        return False
    hint = hints[parts[0]]
    return _path_in(hint, parts[1:]) if dataclasses.is_dataclass(hint) else len(parts) == 1


def _group_options(group: str) -> list[str]:
    folder = RECIPE_DIR if group == "recipe" else CONFIG_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


def check_overrides(overrides: list[str]) -> None:
    """ConfigError for an override that names an unknown group option or key (before Hydra composes them).

    Appends (``+key=value``), deletions (``~key``) and ``hydra.*`` are left to Hydra and to :func:`validate_config`.
    """
    for text in overrides:
        if not isinstance(text, str) or "=" not in text:
            if isinstance(text, str) and text.startswith("~"):
                continue
            raise ConfigError(f"override {text!r} is not of the form key=value (e.g. trainer.epochs=3)")
        key, _, value = text.partition("=")
        key = key.strip()
        if key.startswith(("+", "~")) or key.startswith("hydra") or "@" in key:
            continue
        parts = key.split(".")
        if len(parts) == 1 and (key in GROUPS or key == "recipe"):
            options = _group_options(key)
            if key != "recipe" and value in ("null", ""):
                raise ConfigError(f"{key}={value!r}: the {key} group needs one of its options: {', '.join(options)}")
            if value not in ("null", "") and value not in options and "," not in value:
                raise ConfigError(f"{key}={value!r} is not an option of the {key} group; "
                                  f"{_closest(value, options).replace('valid keys', 'options')}")
            continue
        if parts[0] not in GROUPS and parts[0] not in ("run_name", "seed"):
            raise ConfigError(f"unknown key {key!r}; {_closest(parts[0], [*GROUPS, 'run_name', 'seed', 'recipe'])}")
        if parts[0] == "constraints" and len(parts) == 2:
            if parts[1] not in CONSTRAINT_METRICS:
                raise ConfigError(f"unknown constraint metric {key!r}; "
                                  f"{_closest(parts[1], list(CONSTRAINT_METRICS))} (null = unconstrained)")
            continue
        if parts[0] == "model" or _is_known_key(key):
            continue
        valid = _keys_of(parts[0])
        raise ConfigError(f"unknown key {key!r}; {_closest(key, valid)}")


def explain_unknown_key(key: str) -> str:
    """'unknown key X; did you mean Y?' for a key Hydra could not override."""
    group = key.split(".")[0]
    valid = [f"model.{k}" for k in ("name", "width", "dropout", "space")] if group == "model" else \
        [f"constraints.{m}" for m in CONSTRAINT_METRICS] if group == "constraints" else _keys_of(group)
    if not valid:
        return f"unknown key {key!r}; {_closest(group, [*GROUPS, 'run_name', 'seed'])}"
    extra = f" (a model constructor argument that is not in the config is added with +{key}=...)" \
        if group == "model" else ""
    return f"unknown key {key!r}; {_closest(key, valid)}{extra}"


def _keys_of(group: str) -> list[str]:
    schemas = {"trainer": [TrainerConfig], "hw": [HwConfig], "logger": [LoggerConfig],
               "data": list(DATA_SCHEMAS.values()), "compress": list(COMPRESS_SCHEMAS.values()),
               "task": list(TASK_SCHEMAS.values())}.get(group, [])
    keys: set[str] = set()

    def walk(schema: type, prefix: str) -> None:
        for name, hint in typing.get_type_hints(schema).items():
            if dataclasses.is_dataclass(hint):
                walk(hint, f"{prefix}.{name}")
            else:
                keys.add(f"{prefix}.{name}")
    for schema in schemas:
        walk(schema, group)
    return sorted(keys)


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two nested mappings (``ignore``: keys or prefixes to skip)."""
    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(d, Mapping):
            out: dict[str, Any] = {}
            for k, v in d.items():
                out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
            return out if out or not prefix else {prefix: {}}
        return {prefix: d}
    a, b = flat(old), flat(new)
    changed = []
    for key in sorted(set(a) | set(b)):
        if any(key == i or key.startswith(i + ".") for i in ignore):
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            changed.append(key)
    return changed


__all__ = ["validate_config", "check_overrides", "config_diff", "TrainerConfig", "JointCompressConfig",
           "DATA_SCHEMAS", "COMPRESS_SCHEMAS", "TASK_SCHEMAS", "RESUME_SAFE_KEYS"]
