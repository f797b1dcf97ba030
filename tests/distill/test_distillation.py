"""Distillation: KD loss on hand-computed values, hint adapters, teacher loading and its errors."""
import math

import pytest
import torch
from torch import nn

from pluto.errors import ConfigError, PlutoError
from pluto.models import create_model
from pluto.optimizer.distillation import DistillationLoss, kd_loss, load_teacher


def test_kd_loss_matches_hand_computed_kl_times_t_squared():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 2.0]])
    T = 2.0
    ps = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]
    pt = [1 / (1 + math.e), math.e / (1 + math.e)]
    kl = sum(p * math.log(p / q) for p, q in zip(pt, ps))
    assert float(kd_loss(s, t, T)) == pytest.approx(T * T * kl, rel=1e-5)


def test_identical_logits_give_zero_kd_and_gradient_only_to_student():
    s = torch.randn(4, 10, requires_grad=True)
    t = s.detach().clone().requires_grad_(True)
    loss = kd_loss(s, t, 4.0)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    (kd_loss(s, t + torch.randn(4, 10), 4.0)).backward()
    assert s.grad is not None and t.grad is None


def test_alpha_mixes_kd_and_cross_entropy():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    loss = DistillationLoss(temperature=3.0, alpha=0.25)
    expected = 0.25 * kd_loss(s, t, 3.0) + 0.75 * nn.functional.cross_entropy(s, y)
    assert torch.allclose(loss(s, t, y), expected)
    assert set(loss.last_terms) == {"kd", "ce"}
    assert torch.allclose(loss(s, t), kd_loss(s, t, 3.0))  # no labels: pure KD


class _Net(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3))

    def forward(self, x):
        return self.head(self.body(x))


def test_hint_loss_builds_1x1_adapter_where_widths_differ_and_trains_it():
    torch.manual_seed(0)
    student, teacher = _Net(4), _Net(8).eval()
    loss = DistillationLoss(hint_layers={"body": "body"}, hint_weight=0.5)
    x = torch.randn(2, 1, 6, 6)
    loss.attach(student, teacher, x)
    adapter = loss.adapters["body->body"]
    assert isinstance(adapter, nn.Conv2d) and adapter.kernel_size == (1, 1) and adapter.in_channels == 4
    with torch.no_grad():
        t_logits = teacher(x)
    out = loss(student(x), t_logits)
    hint = nn.functional.mse_loss(adapter(student.body(x)), teacher.body(x))
    assert out.item() == pytest.approx((kd_loss(student(x), t_logits, 4.0) + 0.5 * hint).item(), rel=1e-5)
    out.backward()
    assert adapter.weight.grad.abs().sum() > 0
    same = DistillationLoss(hint_layers=[("body", "body")]).attach(_Net(8), teacher, x)
    assert isinstance(same.adapters["body->body"], nn.Identity)


def test_hint_without_attach_or_unknown_layer_is_an_error():
    loss = DistillationLoss(hint_layers={"body": "body"})
    with pytest.raises(ConfigError, match="attach"):
        loss(torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(ConfigError, match="not found"):
        DistillationLoss(hint_layers={"nope": "body"}).attach(_Net(4), _Net(8), torch.randn(1, 1, 4, 4))


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"alpha": 1.5}])
def test_bad_hyperparameters_raise(kwargs):
    with pytest.raises(ConfigError):
        DistillationLoss(**kwargs)


def test_teacher_by_registry_name_is_frozen_eval():
    teacher = load_teacher("small_cnn", num_classes=10)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_teacher_from_run_checkpoint_uses_config_yaml(tmp_path):
    model = create_model("small_cnn")
    torch.save({"model": model.state_dict()}, tmp_path / "model.pt")
    (tmp_path / "config.yaml").write_text("model:\n  name: small_cnn\n  width: 1.0\n")
    teacher = load_teacher(str(tmp_path / "model.pt"))
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(teacher(x), model.eval()(x))
    explicit = load_teacher(f"small_cnn:{tmp_path / 'model.pt'}")
    assert torch.equal(explicit(x), teacher(x))


def test_missing_teacher_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(PlutoError, match="does not exist"):
        load_teacher(str(tmp_path / "missing.pt"))
    torch.save({"model": {}}, tmp_path / "orphan.pt")
    with pytest.raises(ConfigError, match="architecture"):
        load_teacher(str(tmp_path / "orphan.pt"))
    torch.save({"model": create_model("small_cnn", width=0.5).state_dict()}, tmp_path / "narrow.pt")
    with pytest.raises(ConfigError, match="does not fit"):
        load_teacher(f"small_cnn:{tmp_path / 'narrow.pt'}")


def test_teacher_precision_and_layout_keep_the_logits():
    """The pipeline's teacher: fp32 (channels-last on a CPU) gives the NCHW fp32 logits; bf16 autocast gives fp32
    logits within bf16 rounding, and a KD gradient within a few percent of the fp32 teacher's."""
    from pluto.data import DataSpec
    from pluto.optimizer.distillation import teacher_dtype
    from pluto.optimizer.pipeline import Teacher

    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10).eval()
    x = torch.randn(32, 1, 28, 28)
    with torch.no_grad():
        reference = model(x)
    spec = DataSpec(num_classes=10, in_channels=1, input_size=28)
    exact = Teacher("self", spec, torch.device("cpu"), "fp32")
    exact.build(model)
    torch.testing.assert_close(exact(x), reference, rtol=1e-5, atol=1e-5)
    half = Teacher("self", spec, torch.device("cpu"), "bf16")
    half.build(model)
    logits = half(x)
    assert logits.dtype == torch.float32 and not logits.requires_grad
    scale = reference.abs().max()
    assert (logits - reference).abs().max() < 0.03 * scale
    student = (reference + torch.randn_like(reference)).requires_grad_()
    g_ref, = torch.autograd.grad(kd_loss(student, reference), student)
    g_half, = torch.autograd.grad(kd_loss(student, logits), student)
    assert (g_half - g_ref).norm() < 0.05 * g_ref.norm()
    gpu_bf16 = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8
    assert teacher_dtype("auto", torch.device("cuda")) is (torch.bfloat16 if gpu_bf16 else None)
    assert teacher_dtype("auto", torch.device("cpu")) in (None, torch.bfloat16)
    with pytest.raises(ConfigError, match="teacher precision"):
        teacher_dtype("int8", torch.device("cpu"))


def test_teacher_folds_batchnorm_without_touching_the_student():
    """The teacher runs with its BNs folded into the convs: same eval logits, module names kept (hint taps), and the
    model it was copied from keeps its BatchNorms."""
    from pluto.data import DataSpec
    from pluto.optimizer.pipeline import Teacher

    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10)
    model.train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            model(torch.randn(16, 1, 28, 28) * 2 + 0.5)
    model.eval()
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        reference = model(x)
    teacher = Teacher("self", DataSpec(num_classes=10, in_channels=1, input_size=28), torch.device("cpu"), "fp32")
    teacher.build(model)
    torch.testing.assert_close(teacher(x), reference, rtol=1e-4, atol=1e-4)
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns, "resnet18 has BatchNorms"
    folded = dict(teacher.model.named_modules())
    assert all(isinstance(folded[n], nn.Identity) for n in bns)  # names kept, BN gone
    assert all(isinstance(dict(model.named_modules())[n], nn.BatchNorm2d) for n in bns)  # the student keeps them
    assert not any(p.requires_grad for p in teacher.model.parameters())
