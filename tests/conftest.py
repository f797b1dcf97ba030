import importlib.util
import os
import sys

import pytest
import torch

# the fused CPU quantization kernel compiles with inductor (~20 s per process): its own tests turn it on
os.environ.setdefault("PLUTO_FUSED_QUANT", "off")
torch.set_num_threads(1)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo_root() -> str:
    return REPO


def load_script(name: str, module_name: str | None = None):
    """A benchmark script of ``scripts/`` imported as a module (tests call its functions, never copy them)."""
    spec = importlib.util.spec_from_file_location(module_name or f"script_{name}", os.path.join(REPO, "scripts",
                                                                                                 f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
