#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: venv, pluto + pinned packages, Fashion-MNIST.
# A second run only checks (seconds): packages are reinstalled when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.pluto-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! (cd / && "$OLDPWD/.venv/bin/python" -c "import pluto, torch, sys; sys.exit(pluto.__file__ is None)") 2>/dev/null; then
    echo "setup: installing pluto and its pinned packages (torch 2.14.1 / torchvision 0.29.1; a few minutes once)"
    .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import pluto, torch, torchvision, onnxruntime, hydra, optuna" \
        || { echo "setup: installation failed (see pip output above)" >&2; exit 1; }
    echo "$want" > "$stamp"
fi

fmnist=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$fmnist" ] && [ -z "${PLUTO_FASHION_MNIST:-}" ]; then
    echo "setup: installing Debian package dataset-fashion-mnist"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null \
        || echo "setup: could not install dataset-fashion-mnist; Fashion-MNIST tests will skip and the main job will fail" >&2
fi
