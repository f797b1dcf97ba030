"""The task interface of a compression run (see :mod:`pluto.tasks`)."""
from __future__ import annotations

from torch import Tensor, nn
from torch.utils.data import DataLoader


class Task:
    """Loss, distillation loss and metric of one kind of problem.

    ``metric`` names the figure the report leads with and sweeps maximize (``accuracy`` in %,
    ``psnr`` in dB); ``higher_is_better`` says which way it improves.
    """

    name: str = "task"
    metric: str = "metric"
    higher_is_better: bool = True

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Training loss of ``output`` against ``target`` (a scalar)."""
        raise NotImplementedError

    def distill_loss(self, output: Tensor, teacher_output: Tensor, target: Tensor) -> Tensor:
        """Loss when a teacher's output for the same batch is available (knowledge distillation)."""
        raise NotImplementedError

    def watch(self, student: nn.Module | None, teacher: nn.Module | None) -> None:
        """Called with the model a training phase trains and its teacher when the phase starts, and with
        ``(None, None)`` when it ends (a task with feature distillation hooks their layers here and removes the
        hooks there); the default does nothing."""

    def evaluate(self, model: nn.Module, loader: DataLoader, device) -> dict[str, float]:
        """Metrics of ``model`` on ``loader``; must contain ``self.metric``."""
        raise NotImplementedError
