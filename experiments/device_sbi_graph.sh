#!/usr/bin/env bash
# Issue 4's remaining sbibm cells on a 2- or 4-GPU host, JeffreysNPE trained with every step replayed
# as a CUDA graph (train(cuda_graph=True): the same training as eager steps, several times faster):
#   bash experiments/device_sbi_graph.sh RESULTS LIMIT_S
# 1. tests/test_graphs.py (replayed = eager, JeffreysNPE with ragged batches included); if they
#    fail, the runs below train eagerly and the 10^4 runs at JeffreysNPE's defaults are skipped;
# 2. in the background, until LIMIT_S (sweeps resume cell by cell, so a cut run keeps its cells):
#    glu_j10k      gaussian_linear_uniform 10^4, seed 0, obs 1-10, flow + Langevin, with the cap
#                  of the other 10^4 cells (batch 1000, at most 150 epochs), GPU 0;
#    j10k_defaults two_moons, gaussian_mixture 10^4, seeds 0-2, obs 1-10, flow, JeffreysNPE's own
#                  defaults (batch 200, early stopping only): is the 10^4 loss the cap's?  GPU 1;
#    glu_j10k_defaults  the same for gaussian_linear_uniform, seed 0, GPU 1;
#    glu_npe_zuko_nsf   NPE with JeffreysNPE's flow on gaussian_linear_uniform 10^4, seed 0 (CPU);
#    j100k         two_moons, gaussian_mixture 10^5, seeds 0-2, obs 1-10, JeffreysNPE flow at its
#                  own defaults, two trainings per GPU on GPUs 1-3 (GPU 1 alone on a 2-GPU host);
#    npe100k       the same cells for NPE at sbi's defaults, on GPUs 0, 2, 3 (0 and 1).
#                  On a 4 x H200 host one 10^5 training took 949-1,299 s (JeffreysNPE) and
#                  518-1,433 s (NPE): give LIMIT_S at least 1,700 s for all six seeds to score.
# ONLY="glu_j10k ..." runs just the named sweeps. A 10-dimensional C2ST takes 3-7 minutes on one
# core: poll with calls that follow each other at once, or the idle machine is given back.
set -u
res=$1; limit=$2
mkdir -p "$res"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1  # C2STs run as parallel processes
python3 -m pytest -q tests/test_graphs.py 2>&1 | tee "$res/test_graphs.log" | tail -n 3
graph=$([ "${PIPESTATUS[0]}" = 0 ] && echo true || echo false)
echo "cuda_graph=$graph"
source "$(dirname "$0")/start_mps.sh"
if [ "$(nvidia-smi -L | wc -l)" -ge 4 ]; then j_gpus="cuda:1 cuda:2 cuda:3"; n_gpus="cuda:0 cuda:2 cuda:3"
else j_gpus="cuda:1"; n_gpus="cuda:0 cuda:1"; fi
sweep() { local name=$1 nice=$2; shift 2; [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]] && return; setsid nohup nice -n "$nice" timeout "$limit" python3 experiments/sbi_sweep.py \
  --no-progress --budgets "${BUDGET:-10000}" --out "$res/$name" "$@" > "$res/$name.log" 2>&1 & }
sweep glu_j10k 0 --tasks gaussian_linear_uniform --seeds 0 --methods jeffreys_npe jeffreys_npe_langevin \
  --devices cuda:0 --c2st-jobs 20 --train-kwargs "{\"training_batch_size\":1000,\"max_num_epochs\":150,\"cuda_graph\":$graph}"
if [ "$graph" = true ]; then
  sweep j10k_defaults 0 --tasks two_moons gaussian_mixture --seeds 0 1 2 --methods jeffreys_npe \
    --devices cuda:1 --jobs 6 --c2st-jobs 2 --train-kwargs '{"cuda_graph":true}'
  sweep glu_j10k_defaults 5 --tasks gaussian_linear_uniform --seeds 0 --methods jeffreys_npe \
    --devices cuda:1 --c2st-jobs 10 --train-kwargs '{"cuda_graph":true}'
  BUDGET=100000 sweep j100k 0 --tasks two_moons gaussian_mixture --seeds 0 1 2 --methods jeffreys_npe \
    --devices $j_gpus --jobs 6 --c2st-jobs 4 --train-kwargs '{"cuda_graph":true}'
fi
BUDGET=100000 sweep npe100k 0 --tasks two_moons gaussian_mixture --seeds 0 1 2 --methods npe \
  --devices $n_gpus --jobs 6 --c2st-jobs 4
sweep glu_npe_zuko_nsf 10 --tasks gaussian_linear_uniform --seeds 0 --methods npe_zuko_nsf --devices cpu --c2st-jobs 10
sleep 30; tail -n 2 "$res"/*.log; nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv
