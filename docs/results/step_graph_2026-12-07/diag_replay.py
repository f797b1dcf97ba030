"""Device diagnostic (2026-12-07): is the joint step's replay/uncaptured difference the capture, or run-to-run
nondeterminism? For each model: the joint variant run uncaptured twice (default, default) and captured once
(step-graph), 12 steps, the replay test's settings; prints the largest per-tensor |diff| of each pair.
``python3 docs/results/step_graph_2026-12-07/diag_replay.py det|nodet small_cnn,resnet18`` from the repository root
(``det``: torch.use_deterministic_algorithms(True), CUBLAS_WORKSPACE_CONFIG set)."""
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
import torch  # noqa: E402

sys.path.insert(0, str(Path.cwd()))
from tests.engine.test_step_graph import _overhead, replay_batch, run_steps  # noqa: E402

torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
det = sys.argv[1] == "det"
if det:
    torch.use_deterministic_algorithms(True, warn_only=True)
overhead = _overhead()
for model_name in sys.argv[2].split(","):
    model, x, y = replay_batch(model_name)
    states = {}
    for label, mode in (("default_a", "default"), ("default_b", "default"), ("graph", "step-graph")):
        with tempfile.TemporaryDirectory() as tmp:
            states[label] = run_steps(overhead, model, x, y, overhead.VARIANTS[-1][1], mode, Path(tmp) / label)[2]
    for a, b in (("default_a", "default_b"), ("default_a", "graph"), ("default_b", "graph")):
        top = sorted(((k, float((states[a][k].float() - states[b][k].float()).abs().max())) for k in states[a]),
                     key=lambda kv: -kv[1])
        print(f"{model_name} det={det} {a} vs {b}: max {top[0][1]:.3g}; top: "
              + ", ".join(f"{k} {v:.2g}" for k, v in top[:6]), flush=True)
