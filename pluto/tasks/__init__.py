"""What a compression run optimizes besides cost: the task's loss, its distillation loss and its metric.

A :class:`Task` is a plug-in of :class:`pluto.optimizer.pipeline.Compression`: nothing in the
pipeline assumes class labels. Classification (cross-entropy, logit KD, top-1 accuracy) is one task;
dense prediction tasks (e.g. super-resolution: L1, output KD, PSNR) implement the same four members.
"""
from __future__ import annotations

from pluto.tasks.base import Task
from pluto.tasks.classification import Classification
from pluto.tasks.sr import SuperResolution

TASKS: dict[str, type[Task]] = {"classification": Classification, "sr": SuperResolution}


def build_task(name: str, **kwargs) -> Task:
    """A task by name (``classification``, ``sr``); ConfigError names the known ones."""
    from pluto.errors import ConfigError

    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; use one of {', '.join(sorted(TASKS))}")
    return TASKS[name](**kwargs)


def task_from_config(cfg, data_task: str | None = None) -> Task:
    """The task of a run's config (``task`` group); ``data_task`` (``DataSpec.task``) must agree with it.

    Classification reads its loss and KD settings where they have always been (``trainer.label_smoothing``,
    ``compress.kd``); other tasks read theirs from the ``task`` group.
    """
    from pluto.errors import ConfigError

    task_cfg = cfg.get("task") or {"name": "classification"}
    name = task_cfg["name"]
    if data_task is not None and data_task != name:
        raise ConfigError(f"data={cfg.data.name} yields {data_task} data but the task is {name}; "
                          f"add task={data_task} (and a model for it, e.g. model=edsr for sr)")
    if name == "classification":
        kwargs = {"label_smoothing": cfg.trainer.label_smoothing}
        kd = cfg.compress.get("kd")  # compress=none has no distillation settings
        if kd is not None:
            kwargs.update(kd_temperature=kd.temperature, kd_alpha=kd.alpha)
        return Classification(**kwargs)
    if name == "sr":
        return SuperResolution(kd_alpha=task_cfg["kd_alpha"], kd_loss=task_cfg["kd_loss"], border=task_cfg["border"],
                               compute_ssim=task_cfg["ssim"], hint_layers=list(task_cfg["hint_layers"]),
                               hint_weight=task_cfg["hint_weight"], loss_scale=task_cfg["loss_scale"])
    return build_task(name, **{k: v for k, v in task_cfg.items() if k != "name"})


__all__ = ["Task", "Classification", "SuperResolution", "TASKS", "build_task", "task_from_config"]
