"""Image classification: cross-entropy (label smoothing), logit KD (Hinton), top-1 accuracy (%)."""
from __future__ import annotations

from torch import Tensor, nn
from torch.utils.data import DataLoader

from pluto.tasks.base import Task


class Classification(Task):
    name = "classification"
    metric = "accuracy"
    higher_is_better = True

    def __init__(self, label_smoothing: float = 0.0, kd_temperature: float = 4.0, kd_alpha: float = 0.7):
        from pluto.optimizer.distillation import DistillationLoss

        self.ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.kd = DistillationLoss(temperature=kd_temperature, alpha=kd_alpha)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return self.ce(output, target)

    def distill_loss(self, output: Tensor, teacher_output: Tensor, target: Tensor) -> Tensor:
        return self.kd(output, teacher_output, target)

    def evaluate(self, model: nn.Module, loader: DataLoader, device) -> dict[str, float]:
        from pluto.engine.loop import evaluate

        return evaluate(model, loader, device)
