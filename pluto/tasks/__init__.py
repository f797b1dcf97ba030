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


__all__ = ["Task", "Classification", "SuperResolution", "TASKS", "build_task"]
