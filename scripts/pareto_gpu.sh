#!/usr/bin/env bash
# The full Pareto sweep of issue 7 on one GPU machine, in parallel method groups (small_cnn leaves an H100 idle).
#
#   bash scripts/pareto_gpu.sh OUT SECONDS [extra pareto.py args...]
#
# Trains every method group of both tables (cpu_ort: trained here, measured later on the CPU the table
# describes; h100_cudagraph: trained and measured here) as separate processes, each in OUT/<table>-<group>,
# each stopping to start configs after SECONDS (rerun the same command to resume). Then, with the GPU quiet,
# merges the groups into OUT/merged/<table>/<method>/<target>, re-times every h100 config with CUDA-graph
# replay + NVML energy (`pareto.py --stage measure`), and times a joint step against a plain step
# (`overhead.py --device cuda`). Afterwards, on the CPU of the cpu_ort table:
#
#   python scripts/pareto.py --stage measure --tables cpu_ort_epyc --out OUT/merged
#
# STEPS picks parts (default train,measure,overhead) to fit a call limit; MEASURE_REPEATS (default 2); TABLES the
# tables to train for (default "cpu_ort_epyc h100_cudagraph"; issue 13's GPU regime: TABLES="h100_cudagraph
# h100_cudagraph_b256" bash scripts/pareto_gpu.sh OUT 420 --model resnet18 --seeds 0,1,2 --n-targets 3).
set -u
STEPS=${STEPS:-train,measure,overhead}
OUT=${1:?output folder}; BUDGET=${2:?seconds}; shift 2
HARD=$((BUDGET + 150))  # a config still running then is killed; the rerun redoes it
COMMON=(--stage train --device cuda --threads 1 --train-limit 30000 --epochs 8 --finetune-epochs 4 --time-budget "$BUDGET" "$@")
GROUPS_=("joint,joint_macs,joint_scratch" "prune" qat nas uniform "magnitude,torch_pruning" optuna)
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
pids=()
[[ $STEPS == *train* ]] && for table in ${TABLES:-cpu_ort_epyc h100_cudagraph}; do
  # every group starts from the same dense model per seed: train it once, then copy the cache into each group
  timeout "$HARD" python3 scripts/pareto.py "${COMMON[@]}" --tables "$table" --methods dense,ptq \
    --out "$OUT/$table-dense" > "$OUT/$table-dense.log" 2>&1
  for g in "${GROUPS_[@]}"; do
    name="$table-${g%%,*}"
    mkdir -p "$OUT/$name/$table" && cp -rn "$OUT/$table-dense/$table/_dense" "$OUT/$table-dense/$table/targets.json" \
      "$OUT/$name/$table/" 2>/dev/null
    timeout "$HARD" python3 scripts/pareto.py "${COMMON[@]}" --tables "$table" --methods "$g" --out "$OUT/$name" > "$OUT/$name.log" 2>&1 &
    pids+=($!)
  done
done
[[ ${#pids[@]} -gt 0 ]] && wait "${pids[@]}"
# merge: every group computed the same auto targets; method folders do not overlap
for d in "$OUT"/*-*/; do
  for t in "$d"*/; do
    tname=$(basename "$t"); mkdir -p "$OUT/merged/$tname"
    cp -rn "$t"* "$OUT/merged/$tname/" 2>/dev/null
  done
done
# the GPU tables of TABLES are measured here (CUDA-graph replay at each table's batch); CPU tables on their CPU later
GPU_TABLES=$(echo ${TABLES:-cpu_ort_epyc h100_cudagraph} | tr ' ' '\n' | grep -v '^cpu' | paste -sd, -)
[[ $STEPS == *measure* && -n $GPU_TABLES ]] && timeout 200 python3 scripts/pareto.py --stage measure --tables "$GPU_TABLES" \
  --out "$OUT/merged" --repeats "${MEASURE_REPEATS:-2}" --results-dir "$OUT/results" > "$OUT/measure_h100.log" 2>&1
[[ $STEPS == *overhead* ]] || exit 0
timeout 90 python3 scripts/overhead.py --device cuda --table h100_cudagraph --bits 16,32 --threads 1 --repeats 7 \
  --csv "$OUT/overhead_cuda.csv" > "$OUT/overhead_cuda.log" 2>&1
