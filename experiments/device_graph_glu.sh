#!/usr/bin/env bash
# This session's device run (issues 2 and 4) on a 4-GPU host, in the background until LIMIT_S:
#   bash experiments/device_graph_glu.sh RESULTS LIMIT_S
# 1. the CUDA-graph tests (tests/test_graphs.py) and the step-speed benchmark, replayed and eager;
# 2. if the tests pass: the paper-length 2D density runs (experiments/device_density.sh, GPUs 0-3);
# 3. gaussian_linear_uniform, seed 0, observations 1-10: JeffreysNPE at 10^3 (CPU core) and 10^4
#    (GPU 3, batch 1000, at most 150 epochs, as the other 10^4 cells), NPE at 10^3 and 10^4 (CPU).
set -u
res=$1; limit=$2
mkdir -p "$res"
# SKIP_BENCH=1 skips step 1 (tests and benchmark), NO_DENSITY=1 skips step 2; J10K_KWARGS
# replaces the 10^4 cap (e.g. '{}' for JeffreysNPE's own defaults)
graph_ok=0
[ -z "${SKIP_BENCH:-}" ] && { python3 -m pytest -q tests/test_graphs.py 2>&1 | tee "$res/test_graphs.log" | tail -n 3
  graph_ok=${PIPESTATUS[0]}; }
[ -z "${SKIP_BENCH:-}" ] && for mode in --cuda-graph ""; do
  python3 experiments/compute_time.py --device cuda:0 $mode --iterations $([ -n "$mode" ] && echo 300 || echo 40) \
    --rounds 3 --num-zeta-samples 10 100 1000 --out "$res/speed${mode:+_graph}" 2>&1 | grep -v "timing:" | tail -n 5
done
j10k=${J10K_KWARGS:-'{"training_batch_size":1000,"max_num_epochs":150}'}
sweep() { local name=$1; shift; setsid nohup timeout "$limit" python3 experiments/sbi_sweep.py \
  --tasks gaussian_linear_uniform --seeds 0 --no-progress --out "$res/$name" "$@" > "$res/$name.log" 2>&1 & }
sweep glu_j10k --budgets 10000 --methods jeffreys_npe jeffreys_npe_langevin --devices cuda:3 \
  --sample-devices cuda:3 --c2st-jobs 12 --train-kwargs "$j10k"
sweep glu_j1k --budgets 1000 --methods jeffreys_npe jeffreys_npe_langevin --devices cpu --sample-devices cuda:3 --c2st-jobs 12
sweep glu_npe --budgets 1000 10000 --methods npe --devices cpu --jobs 2 --c2st-jobs 6
if [ -n "${NO_DENSITY:-}" ]; then
  echo "NO_DENSITY set: no density runs" | tee "$res/device_density.log"
elif [ "$graph_ok" = 0 ]; then
  setsid nohup bash experiments/device_density.sh "$res/density2d" "$limit" cuda:0 cuda:1 cuda:2 cuda:3 \
    > "$res/device_density.log" 2>&1 &
else
  echo "CUDA-graph tests failed: no density runs" | tee "$res/device_density.log"
fi
sleep 20; cat "$res/device_density.log"; nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv
