"""Super-resolution (and other image-to-image tasks): L1 loss, output distillation, PSNR / SSIM in dB / [0, 1].

Images live in [0, 1]. PSNR is ``10 log10(1 / MSE)`` per image (outputs clamped to [0, 1]), averaged over
images, with ``border`` pixels shaved off each side as is usual in SR benchmarks (0 here: Fashion-MNIST's
border is background). SSIM (Wang et al. 2004) uses the standard 11x11 Gaussian window (sigma 1.5),
``C1 = 0.01^2``, ``C2 = 0.03^2``, averaged over channels and images.

Distillation regresses the teacher's output image: ``alpha * d(student, teacher) + (1 - alpha) * L1(student,
target)`` with ``d`` = L1 or MSE (``kd_loss``). The teacher's output is a cleaner target than the ground
truth for a small student (it is what a network *can* produce from the input), and it needs no labels.
Optional feature hints (``hint_layers``, ``hint_weight``) add attention transfer (Zagoruyko & Komodakis 2017)
on those layers' outputs: the mean over channels of the squared activation, L2-normalized per image, must match
the teacher's. It needs no adapter, so a pruned student with fewer channels is compared as it is.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pluto.errors import ConfigError
from pluto.tasks.base import Task

KD_LOSSES = ("l1", "l2")
PSNR_CAP = 100.0  # dB counted for an exact reconstruction (infinite PSNR), so means stay finite


def psnr(output: Tensor, target: Tensor, max_value: float = 1.0, border: int = 0) -> Tensor:
    """PSNR in dB of each image of a batch (N x C x H x W, values in [0, max_value]); inf for identical images."""
    if border:
        output, target = output[..., border:-border, border:-border], target[..., border:-border, border:-border]
    mse = (output.clamp(0.0, max_value) - target).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(max_value ** 2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim(output: Tensor, target: Tensor, max_value: float = 1.0, window: int = 11) -> Tensor:
    """Mean SSIM of each image of a batch (N x C x H x W), Gaussian window, 'valid' positions only
    (images smaller than the window use the largest odd window that fits)."""
    c = output.shape[1]
    window = min(window, output.shape[-1], output.shape[-2])
    window -= 1 - window % 2
    w = _gaussian_window(window).to(output)[None, None].expand(c, 1, window, window)
    x, y = output.clamp(0.0, max_value), target
    c1, c2 = (0.01 * max_value) ** 2, (0.03 * max_value) ** 2
    mu_x, mu_y = F.conv2d(x, w, groups=c), F.conv2d(y, w, groups=c)
    sxx = F.conv2d(x * x, w, groups=c) - mu_x ** 2
    syy = F.conv2d(y * y, w, groups=c) - mu_y ** 2
    sxy = F.conv2d(x * y, w, groups=c) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return ssim_map.flatten(1).mean(1)


def attention_map(features: Tensor) -> Tensor:
    """Spatial attention of N x C x H x W features: mean over channels of the square, L2-normalized per image."""
    return F.normalize(features.pow(2).mean(1).flatten(1), dim=1)


class SuperResolution(Task):
    """x``r`` super-resolution: ``loss`` L1 to the target image, ``metric`` PSNR (dB, higher is better).

    ``loss_scale`` multiplies the training losses (not the reported ``loss``): an L1 between [0, 1] images is
    ~0.05, 10-20x below a classifier's cross-entropy, and next to the Lagrangian's constraint term such a small
    task loss cannot hold channels against the cost pressure: with 1 the search of a Fashion-MNIST EDSR collapsed
    every group to one channel; with 100 (L1 in hundredths of the pixel range) it stopped near the target.
    """

    name = "sr"
    metric = "psnr"
    higher_is_better = True

    def __init__(self, kd_alpha: float = 0.5, kd_loss: str = "l1", border: int = 0, compute_ssim: bool = True,
                 hint_layers: tuple[str, ...] | list[str] = (), hint_weight: float = 0.0, loss_scale: float = 100.0):
        if not 0.0 <= kd_alpha <= 1.0:
            raise ConfigError(f"task.kd_alpha must be in [0, 1], got {kd_alpha}")
        if kd_loss not in KD_LOSSES:
            raise ConfigError(f"task.kd_loss must be one of {KD_LOSSES}, got {kd_loss!r}")
        self.kd_alpha, self.kd_loss, self.border, self.compute_ssim = float(kd_alpha), kd_loss, int(border), compute_ssim
        self.hint_layers, self.hint_weight = tuple(hint_layers), float(hint_weight)
        if not loss_scale > 0:
            raise ConfigError(f"task.loss_scale must be > 0, got {loss_scale}")
        self.loss_scale = float(loss_scale)
        self._taps: tuple = ()

    def watch(self, student: nn.Module | None, teacher: nn.Module | None) -> None:
        """Hook ``hint_layers`` of ``student`` and ``teacher`` (replacing hooks of earlier models).

        Without a teacher nothing is hooked, but the layer names are still checked against ``student`` (a typo fails
        when the run starts, not after the warm-up); ``watch(None, None)`` removes every hook (before a model is
        copied, exported or saved)."""
        from pluto.optimizer.distillation import FeatureTap

        for tap in self._taps:
            tap.remove()
        self._taps = ()
        if not (self.hint_layers and self.hint_weight > 0) or student is None:
            return
        if teacher is None:
            FeatureTap(student, self.hint_layers).remove()  # ConfigError naming a missing layer
            return
        self._taps = (FeatureTap(student, self.hint_layers), FeatureTap(teacher, self.hint_layers))

    def hint_loss(self) -> Tensor:
        """Mean attention-transfer distance over the hint layers of the last student and teacher forward passes."""
        student, teacher = self._taps
        losses = [(attention_map(student.features[n]) - attention_map(teacher.features[n].detach())).pow(2).mean()
                  for n in self.hint_layers]
        return torch.stack(losses).mean()

    @staticmethod
    def _check(output: Tensor, target: Tensor) -> None:
        if output.shape != target.shape:
            raise ConfigError(f"the model outputs {tuple(output.shape)} but the targets are {tuple(target.shape)}: "
                              "set model.scale to the data's scale (data.scale) and use an image-to-image model "
                              "(e.g. model=edsr) with task=sr")

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        self._check(output, target)
        return self.loss_scale * F.l1_loss(output, target)

    def distill_loss(self, output: Tensor, teacher_output: Tensor, target: Tensor | None) -> Tensor:
        teacher_output = teacher_output.detach()
        self._check(output, teacher_output)
        kd = F.l1_loss(output, teacher_output) if self.kd_loss == "l1" else F.mse_loss(output, teacher_output)
        kd = self.loss_scale * kd
        if target is not None and self.kd_alpha < 1.0:
            kd = self.kd_alpha * kd + (1.0 - self.kd_alpha) * self.loss(output, target)
        if self._taps:
            kd = kd + self.hint_weight * self.hint_loss()
        return kd

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device) -> dict[str, float]:
        """``psnr`` (dB), ``ssim`` ([0, 1], if enabled) and ``loss`` (L1) means over the images of ``loader``."""
        was_training = model.training
        model.eval()
        sums = {"psnr": 0.0, "ssim": 0.0, "loss": 0.0}
        n = 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = model(x)
            self._check(out, y)
            p = psnr(out, y, border=self.border)
            sums["psnr"] += float(torch.where(torch.isinf(p), torch.full_like(p, PSNR_CAP), p).sum())
            if self.compute_ssim:
                sums["ssim"] += float(ssim(out, y).sum())
            sums["loss"] += float(F.l1_loss(out, y, reduction="none").flatten(1).mean(1).sum())
            n += y.shape[0]
        model.train(was_training)
        if not self.compute_ssim:
            sums.pop("ssim")
        return {k: v / max(n, 1) for k, v in sums.items()}


def bicubic_psnr(loader: DataLoader, scale: int, mode: str = "bicubic") -> float:
    """PSNR (dB) of plain interpolation (``mode``: bicubic, bilinear, nearest) on ``loader``: the floor any SR
    model must beat."""
    total, n = 0.0, 0
    for x, y in loader:
        up = F.interpolate(x, scale_factor=scale, mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
        p = psnr(up, y)
        total += float(torch.where(torch.isinf(p), torch.full_like(p, PSNR_CAP), p).sum())
        n += y.shape[0]
    return total / max(n, 1) if n else math.nan
