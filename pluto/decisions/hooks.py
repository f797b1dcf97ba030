"""Installing and removing decision modules that act through forward hooks (channel gates, block gates): one
submodule on the model (so ``parameters()``, ``.to()`` and ``state_dict`` carry the logits) plus hooks on its layers."""
from __future__ import annotations

from torch import nn


def install(model: nn.Module, attr: str, decisions: nn.Module) -> nn.Module:
    """Register ``decisions`` (hooks already attached) as ``model.<attr>``, on the device of the model's weights."""
    first = next(model.parameters(), None)
    if first is not None:
        decisions.to(first.device)
    setattr(model, attr, decisions)
    return decisions


def uninstall(model: nn.Module, attr: str, kind: type, hook_types: tuple[type, ...]) -> None:
    """Remove ``model.<attr>`` (a ``kind``) and its hooks, also hooks of ``hook_types`` that ``copy.deepcopy``
    carried over to a copy of the model."""
    decisions = getattr(model, attr, None)
    if isinstance(decisions, kind):
        decisions.remove()
        delattr(model, attr)
    for module in model.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for key, hook in list(hooks.items()):
                if isinstance(hook, hook_types):
                    del hooks[key]
                    module._forward_hooks_always_called.pop(key, None)
