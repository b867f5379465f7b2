#!/usr/bin/env bash
# The paper-length 2D density runs of issue 2 (README's density table) on a GPU host.
#   bash experiments/device_density.sh OUT LIMIT_S [GPU...]
# Every training step is replayed as a CUDA graph (--cuda-graph): these models are launch-bound,
# so the recorded step runs several times faster than eager steps. All (dataset, seed) jobs run at
# once, spread round-robin over the GPUs, gmm40 (100,000 iterations) first so that its three
# seeds land on different GPUs. CUDA MPS, where the host has it, lets the processes that share a
# GPU run their small kernels side by side instead of taking turns. Everything stops at LIMIT_S.
# DENSITY_ITERS=N sets every dataset's iterations (default: the paper's 25,000; gmm40 100,000).
set -u
out=$1; limit=$2; shift 2
gpus=(${*:-cuda:0})
mkdir -p "$out"
source "$(dirname "$0")/start_mps.sh"
timeout "$limit" python3 experiments/density2d.py --devices "${gpus[@]}" --cuda-graph --jobs 18 --threads 1 \
  ${DENSITY_ITERS:+--iterations $DENSITY_ITERS} \
  --datasets gmm40 ring8 grid25 moons spiral rings --seeds 0 1 2 --out "$out" > "$out.log" 2>&1
echo "density2d exit $?"
