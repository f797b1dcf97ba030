"""Knowledge distillation: a compressed student learns from the uncompressed teacher's logits (and features).

Logit KD (Hinton et al. 2015)::

    L = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

The ``T^2`` factor keeps the soft-target gradients the same size as the hard-label ones when the
temperature changes (the soft gradients scale as ``1/T^2``). Without labels ``L`` is the KD term alone.

Hint / feature loss (FitNets): for each pair ``(student_layer, teacher_layer)`` the student's
feature map, passed through a 1x1 conv adapter where the channel widths differ (identity where
they match) and average-pooled to the teacher's spatial size if larger, should match the teacher's:
``hint_weight * mean_pairs MSE(adapter(f_s), f_t)``. Adapters are parameters of the loss: add
``loss.parameters()`` to the optimizer.

The teacher comes from :func:`load_teacher`: a run's checkpoint, a registry name, or both.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from pluto.errors import ConfigError, UnsupportedModelError


TEACHER_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=1)
def _cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo; False where unreadable)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def teacher_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the teacher's forward pass (None: fp32, no autocast).

    ``auto`` is bf16 on CPUs with native bf16 (oneDNN's bf16 convolutions there run the teacher 2-3x
    faster than fp32; the KD gradient it gives differs from the fp32 teacher's by about 1-2 % in norm
    on small_cnn/resnet18, well inside minibatch noise) and on GPUs with bf16 tensor cores (compute
    capability >= 8.0: under ``trainer.compile`` the step is bound by the device's arithmetic, and the
    teacher's convolutions were a third of it), fp32 elsewhere.
    """
    if precision == "auto":
        if device.type == "cuda":
            native = torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
            return torch.bfloat16 if native else None
        return torch.bfloat16 if device.type == "cpu" and _cpu_has_native_bf16() else None
    if precision not in TEACHER_PRECISIONS:
        raise ConfigError(f"unknown teacher precision {precision!r}; use auto or one of "
                          f"{', '.join(TEACHER_PRECISIONS)}")
    return TEACHER_PRECISIONS[precision]


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` averaged over the batch (nats)."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature ** 2


class FeatureTap:
    """Records the outputs of named submodules on every forward pass (forward hooks)."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ConfigError(f"hint layer(s) {missing} not found in {type(model).__name__}; "
                              f"available e.g.: {', '.join(list(modules)[1:8])}")
        self.features: dict[str, Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def record(module: nn.Module, args: tuple, output: Tensor) -> None:
            self.features[name] = output
        return record

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _adapter(student_channels: int, teacher_channels: int) -> nn.Module:
    if student_channels == teacher_channels:
        return nn.Identity()
    return nn.Conv2d(student_channels, teacher_channels, 1, bias=False)


class DistillationLoss(nn.Module):
    """Logit KD plus optional hint losses; see the module docstring for the formula.

    Args:
        temperature: softmax temperature ``T`` (> 0) of the soft targets.
        alpha: weight of the KD term in ``[0, 1]``; ``1 - alpha`` weights cross-entropy on labels.
        hint_layers: ``{student_layer: teacher_layer}`` (or pairs) of feature maps to match;
            call :meth:`attach` before training to hook them and build adapters.
        hint_weight: weight of the mean hint MSE.
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9,
                 hint_layers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None, hint_weight: float = 1.0):
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"distillation temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"distillation alpha must be in [0, 1], got {alpha}")
        self.temperature, self.alpha, self.hint_weight = float(temperature), float(alpha), float(hint_weight)
        pairs = list(hint_layers.items()) if isinstance(hint_layers, Mapping) else list(hint_layers or [])
        self.hint_pairs: list[tuple[str, str]] = [(str(s), str(t)) for s, t in pairs]
        self.adapters = nn.ModuleDict()
        self._student_tap: FeatureTap | None = None
        self._teacher_tap: FeatureTap | None = None
        self.last_terms: dict[str, Tensor] = {}  # detached: read (a device sync) only when logged

    @torch.no_grad()
    def attach(self, student: nn.Module, teacher: nn.Module, example_input: Tensor) -> "DistillationLoss":
        """Hook the hint layers of both models and build 1x1 adapters from one forward of ``example_input``."""
        if not self.hint_pairs:
            return self
        self.detach_hooks()
        self._student_tap = FeatureTap(student, [s for s, _ in self.hint_pairs])
        self._teacher_tap = FeatureTap(teacher, [t for _, t in self.hint_pairs])
        was_training = student.training
        student.eval()
        student(example_input)
        student.train(was_training)
        teacher(example_input)
        for s_name, t_name in self.hint_pairs:
            fs, ft = self._student_tap.features[s_name], self._teacher_tap.features[t_name]
            if fs.dim() != ft.dim() or fs.dim() not in (2, 4):
                raise UnsupportedModelError(f"hint pair {s_name} -> {t_name}: feature shapes {tuple(fs.shape)} and "
                                            f"{tuple(ft.shape)} cannot be matched; pick two conv (NCHW) or two "
                                            "flat (NC) outputs")
            if fs.dim() == 2:
                adapter = nn.Identity() if fs.shape[1] == ft.shape[1] else nn.Linear(fs.shape[1], ft.shape[1], bias=False)
            else:
                adapter = _adapter(fs.shape[1], ft.shape[1])
            self.adapters[self._key(s_name, t_name)] = adapter.to(fs.device)
        self._student_tap.features.clear()
        self._teacher_tap.features.clear()
        return self

    @staticmethod
    def _key(student_layer: str, teacher_layer: str) -> str:
        return f"{student_layer}->{teacher_layer}".replace(".", "_")

    def detach_hooks(self) -> None:
        """Remove the feature hooks from student and teacher."""
        for tap in (self._student_tap, self._teacher_tap):
            if tap is not None:
                tap.remove()
        self._student_tap = self._teacher_tap = None

    def hint_loss(self) -> Tensor:
        """Mean MSE between adapted student features and teacher features of the last forward passes."""
        if self._student_tap is None or self._teacher_tap is None:
            raise ConfigError("hint_layers were given but DistillationLoss.attach(student, teacher, x) was never called")
        losses = []
        for s_name, t_name in self.hint_pairs:
            if s_name not in self._student_tap.features or t_name not in self._teacher_tap.features:
                raise ConfigError(f"no features recorded for hint pair {s_name} -> {t_name}; run student and teacher "
                                  "forward before computing the loss")
            fs = self.adapters[self._key(s_name, t_name)](self._student_tap.features[s_name])
            ft = self._teacher_tap.features[t_name].detach()
            if fs.dim() == 4 and fs.shape[-2:] != ft.shape[-2:]:
                if fs.shape[-1] >= ft.shape[-1]:
                    fs = F.adaptive_avg_pool2d(fs, ft.shape[-2:])
                else:
                    ft = F.adaptive_avg_pool2d(ft, fs.shape[-2:])
            losses.append(F.mse_loss(fs, ft))
        return torch.stack(losses).mean()

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor | None = None) -> Tensor:
        """The distillation loss of one batch (scalar); components go to ``last_terms`` for logging."""
        if student_logits.shape != teacher_logits.shape:
            raise ConfigError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                              f"{tuple(teacher_logits.shape)} differ; both models need the same num_classes")
        kd = kd_loss(student_logits, teacher_logits, self.temperature)
        terms = {"kd": kd}
        if targets is None:
            loss = kd
        else:
            ce = F.cross_entropy(student_logits, targets)
            terms["ce"] = ce
            loss = self.alpha * kd + (1.0 - self.alpha) * ce
        if self.hint_pairs:
            hint = self.hint_loss()
            terms["hint"] = hint
            loss = loss + self.hint_weight * hint
        self.last_terms = {k: v.detach() for k, v in terms.items()}
        return loss


def _model_name_from_run(path: Path) -> str | None:
    """The ``model.name`` in the ``config.yaml`` of the run folder holding a checkpoint, if any."""
    config = path.parent / "config.yaml"
    if not config.is_file():
        return None
    try:
        data = yaml.safe_load(config.read_text()) or {}
    except yaml.YAMLError:
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return model.get("name") if isinstance(model, dict) else None


def load_teacher(spec: str, num_classes: int = 10, in_channels: int = 1, input_size: int = 28,
                 model_name: str | None = None) -> nn.Module:
    """A frozen teacher in eval mode, from ``spec``:

    - a registry name (``"resnet18"``): random weights (useful only if you train it afterwards);
    - a checkpoint path (``runs/x/model.pt``): a file written by :func:`pluto.save` restores its own
      (possibly compressed) architecture; otherwise the architecture from ``model_name``, else from the
      run's ``config.yaml`` (``model.name``) beside it; the weights from the file's ``"model"``
      state dict (or the file itself if it is a state dict), loaded with ``weights_only=True``;
    - ``"name:path"``: both explicitly.
    """
    from pluto.models import create_model, list_models

    name, path = model_name, None
    if ":" in spec and spec.split(":", 1)[0] in list_models():
        name, path = spec.split(":", 1)
    elif spec in list_models():
        name = spec
    else:
        path = spec
    if path is not None:
        ckpt = Path(os.path.expanduser(path))
        if not ckpt.is_file():
            raise ConfigError(f"teacher checkpoint {ckpt} does not exist; pass an existing .pt file (e.g. "
                              f"outputs/<run>/model.pt) or a registry name ({', '.join(list_models()[:4])}, ...)")
        if name is None:
            from pluto.engine.checkpoint import load_checkpoint

            if "architecture" in (payload := load_checkpoint(ckpt)):  # pluto.save: pruned / NAS / QAT teachers too
                from pluto.materialize.saving import load

                return _frozen(load(ckpt))
        name = name or _model_name_from_run(ckpt)
        if name is None:
            raise ConfigError(f"cannot tell the teacher architecture for {ckpt}: no config.yaml beside it; "
                              "pass 'name:path' (e.g. 'resnet18:runs/x/model.pt') or model_name=...")
    teacher = create_model(name, num_classes=num_classes, in_channels=in_channels, input_size=input_size)
    if path is not None:
        from pluto.engine.checkpoint import load_checkpoint

        payload = load_checkpoint(ckpt)
        state = payload.get("model", payload) if isinstance(payload, dict) else payload
        try:
            teacher.load_state_dict(state)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"teacher checkpoint {ckpt} does not fit architecture {name!r} "
                              f"({str(exc).splitlines()[0]}); check the model name and num_classes/in_channels") from exc
    return _frozen(teacher)


def _frozen(teacher: nn.Module) -> nn.Module:
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
