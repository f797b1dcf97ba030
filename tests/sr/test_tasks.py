"""The task plug-in: classification and super-resolution through the same four members; PSNR/SSIM on known images."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pluto.errors import ConfigError
from pluto.tasks import TASKS, Classification, SuperResolution, Task, build_task
from pluto.tasks.sr import bicubic_psnr, psnr, ssim


def test_psnr_of_known_images():
    target = torch.zeros(2, 1, 4, 4)
    out = target.clone()
    out[0] += 0.1  # MSE 0.01 -> 20 dB
    out[1, 0, 0, 0] = 1.0  # MSE 1/16 -> 10 log10(16) dB
    p = psnr(out, target)
    assert p[0].item() == pytest.approx(20.0, abs=1e-4) and p[1].item() == pytest.approx(10 * math.log10(16), abs=1e-4)
    assert torch.isinf(psnr(target, target)).all()
    assert psnr(target - 5.0, target).isinf().all()  # outputs are clamped to [0, 1] first
    assert psnr(torch.full((1, 1, 6, 6), 0.5), torch.zeros(1, 1, 6, 6), border=1).item() == pytest.approx(6.0206, abs=1e-3)


def test_ssim_of_known_images():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 24, 24, generator=g)
    assert torch.allclose(ssim(img, img), torch.ones(2), atol=1e-5)
    noisy = (img + 0.2 * torch.randn(img.shape, generator=g)).clamp(0, 1)
    assert (ssim(noisy, img) < 0.9).all()
    const = torch.full((1, 1, 16, 16), 0.5)  # flat images: SSIM is the luminance term only
    other = torch.full((1, 1, 16, 16), 0.3)
    c1 = 0.01 ** 2
    assert ssim(other, const).item() == pytest.approx((2 * 0.15 + c1) / (0.25 + 0.09 + c1), abs=1e-4)


def test_registry_and_interface():
    assert set(TASKS) >= {"classification", "sr"}
    for name in ("classification", "sr"):
        task = build_task(name)
        assert isinstance(task, Task) and task.higher_is_better
    assert build_task("sr").metric == "psnr" and build_task("classification").metric == "accuracy"
    with pytest.raises(ConfigError, match="unknown task"):
        build_task("segmentation")
    with pytest.raises(ConfigError, match="kd_alpha"):
        SuperResolution(kd_alpha=2.0)


def test_sr_losses():
    task = SuperResolution(kd_alpha=0.25, loss_scale=1.0)
    out, teacher, target = torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.4), torch.full((2, 1, 4, 4), 0.8)
    assert task.loss(out, target).item() == pytest.approx(0.8)
    assert task.distill_loss(out, teacher, target).item() == pytest.approx(0.25 * 0.4 + 0.75 * 0.8)
    assert task.distill_loss(out, teacher, None).item() == pytest.approx(0.4)
    assert SuperResolution(kd_loss="l2", kd_alpha=1.0, loss_scale=1.0).distill_loss(out, teacher, target).item() == \
        pytest.approx(0.16)
    assert SuperResolution().loss(out, target).item() == pytest.approx(80.0)  # default: L1 x 100
    with pytest.raises(ConfigError, match="model.scale"):
        task.loss(torch.zeros(2, 1, 8, 8), target)


class Upsample2(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="nearest")


def test_sr_evaluate_on_known_pairs():
    hr = torch.rand(6, 1, 8, 8).round()  # binary images: nearest upsampling of their 2x2 blocks is exact
    hr = F.interpolate(hr[..., ::2, ::2], scale_factor=2, mode="nearest")
    lr = hr[..., ::2, ::2]
    loader = DataLoader(TensorDataset(lr, hr), batch_size=4)
    metrics = SuperResolution().evaluate(Upsample2(), loader, "cpu")
    assert metrics["psnr"] == 100.0 and metrics["ssim"] == pytest.approx(1.0, abs=1e-4) and metrics["loss"] == 0.0
    blurred = DataLoader(TensorDataset(lr, (hr + 0.1).clamp(0, 1)), batch_size=4)
    m = SuperResolution(compute_ssim=False).evaluate(Upsample2(), blurred, "cpu")
    assert "ssim" not in m and 15.0 < m["psnr"] < 100.0
    assert bicubic_psnr(loader, 2, mode="nearest") == 100.0
    assert 5.0 < bicubic_psnr(loader, 2) < 100.0


def test_classification_task_matches_the_engine():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.randn(10, 1, 4, 4), torch.randint(0, 3, (10,))
    task = Classification()
    logits = model(x)
    assert task.loss(logits, y).item() == pytest.approx(F.cross_entropy(logits, y).item())
    kd = task.distill_loss(logits, logits.detach(), y)
    assert kd.item() == pytest.approx(0.3 * F.cross_entropy(logits, y).item(), rel=1e-4)
    metrics = task.evaluate(model, DataLoader(TensorDataset(x, y), batch_size=4), "cpu")
    assert metrics[task.metric] == pytest.approx(100.0 * float((logits.argmax(1) == y).float().mean()))


def test_task_from_config_and_data_mismatch():
    from pluto.tasks import task_from_config
    from pluto.train import compose

    sr = task_from_config(compose(["task=sr", "task.kd_loss=l2", "data=fashion_mnist_sr", "model=edsr"]), "sr")
    assert isinstance(sr, SuperResolution) and sr.kd_loss == "l2"
    cls = task_from_config(compose(["trainer.label_smoothing=0.1"]), "classification")
    assert isinstance(cls, Classification) and cls.ce.label_smoothing == 0.1 and cls.kd.alpha == 0.7
    with pytest.raises(ConfigError, match="add task=sr"):
        task_from_config(compose(["data=fashion_mnist_sr"]), "sr")


def test_attention_transfer_hints_compare_pruned_and_dense_features():
    from pluto.models import create_model
    from pluto.tasks.sr import attention_map

    f = torch.rand(2, 8, 5, 5)
    assert torch.allclose(attention_map(f).norm(dim=1), torch.ones(2))
    assert torch.allclose(attention_map(f), attention_map(torch.cat([f, f], 1)))  # channel count does not matter
    teacher = create_model("edsr", 0, 1, 8, width=16, blocks=1).eval()
    student = create_model("edsr", 0, 1, 8, width=8, blocks=1)
    task = SuperResolution(kd_alpha=1.0, hint_layers=["body_end"], hint_weight=10.0, loss_scale=1.0)
    task.watch(student, teacher)
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        t_out = teacher(x)
    out = student(x)
    loss = task.distill_loss(out, t_out, None)
    assert loss.item() == pytest.approx(F.l1_loss(out, t_out).item() + 10.0 * task.hint_loss().item(), rel=1e-5)
    loss.backward()
    assert student.head.weight.grad is not None
    task.watch(student, None)  # no teacher: hooks removed, output KD only
    assert task.distill_loss(out, t_out, None).item() == pytest.approx(F.l1_loss(out, t_out).item())
