"""Device diagnostic: is the joint step's replay/uncaptured difference the capture, or run-to-run nondeterminism?
For each model: the joint variant run uncaptured twice (default, default) and captured once (step-graph), 12 steps,
the test's settings; prints the largest per-tensor |diff| of each pair. Then the same with
torch.use_deterministic_algorithms(True) (CUBLAS_WORKSPACE_CONFIG set) if it runs."""
import os, sys, tempfile
from pathlib import Path
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
import torch
sys.path.insert(0, str(Path.cwd()))
from tests.engine.test_step_graph import _state, _overhead, GPU_TABLE
from pluto.models import create_model

torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
overhead = _overhead()
device = torch.device("cuda")
det = sys.argv[1] == "det" if len(sys.argv) > 1 else False
if det:
    torch.use_deterministic_algorithms(True, warn_only=True)
for model_name in sys.argv[2].split(","):
    torch.manual_seed(0)
    model = create_model(model_name, 10, 1, 28)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    x, y = torch.randn(32, 1, 28, 28, device=device), torch.randint(0, 10, (32,), device=device)
    name, flags = overhead.VARIANTS[-1]
    states = {}
    for label, mode in (("default_a", "default"), ("default_b", "default"), ("graph", "step-graph")):
        torch.manual_seed(1)
        with tempfile.TemporaryDirectory() as tmp:
            step = overhead.build_step(model, x, y, str(GPU_TABLE), (16, 32), device, Path(tmp) / label,
                                       compile_mode=mode, extra=("trainer.log_every=2",), **flags)
            for _ in range(12):
                step()
            torch.cuda.synchronize()
            states[label] = _state(step)
    def diffs(a, b):
        d = {k: float((states[a][k].float() - states[b][k].float()).abs().max()) for k in states[a]}
        return sorted(d.items(), key=lambda kv: -kv[1])
    for a, b in (("default_a", "default_b"), ("default_a", "graph"), ("default_b", "graph")):
        top = diffs(a, b)
        print(f"{model_name} det={det} {a} vs {b}: max {top[0][1]:.3g}; top: " +
              ", ".join(f"{k} {v:.2g}" for k, v in top[:6]), flush=True)
