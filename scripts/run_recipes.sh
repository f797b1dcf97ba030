#!/usr/bin/env bash
# Run several recipes one after another into outputs/<recipe>, keep going if one fails, print each verdict.
# Usage: scripts/run_recipes.sh "<shared overrides>" recipe1 recipe2 ...
#   e.g. scripts/run_recipes.sh "trainer.device=cuda" fmnist_small_cnn_cpu_int8 fmnist_resnet18_cpu_int8
# Runs trained on a GPU for a CPU table are then measured on the CPU with pluto measure RUN_DIR.
set -uo pipefail
shared=$1; shift
PY=${PYTHON:-python3}
for recipe in "$@"; do
    echo "=== $recipe ($(date -u +%H:%M:%S))"
    start=$(date +%s)
    # shellcheck disable=SC2086
    $PY -m pluto.train recipe="$recipe" $shared hydra.run.dir="outputs/$recipe" 2>&1 \
        | grep -E "epoch|HOLDS|VIOLATED|NOT MEASURED|accuracy .* params|error|Error" || true
    echo "=== $recipe took $(( $(date +%s) - start )) s"
done
