#!/usr/bin/env bash
# The GPU-machine run behind the README's SBI numbers: NPE trains on CPU cores (where sbi's
# small flows are fastest), JeffreysNPE on the GPU (Langevin sampling needs it), side by side,
# then everything is merged into one results folder.
#   bash experiments/device_sweep.sh OUT BUDGET LIMIT_S JEFFREYS_TRAIN_KWARGS [OBSERVATIONS...]
set -u
out=$1; budget=$2; limit=$3; jkw=$4; shift 4
obs=${*:-1 2 3 4 5 6 7 8 9 10}
mkdir -p "$out"
nvidia-cuda-mps-control -d >/dev/null 2>&1 || true
common=(--budgets "$budget" --observations $obs --no-progress)
timeout "$limit" python3 experiments/sbi_sweep.py --tasks two_moons gaussian_mixture --seeds 0 1 2 \
  --methods npe --device cpu --jobs 6 --out "$out/npe" "${common[@]}" > "$out/npe.log" 2>&1 &
timeout "$limit" python3 experiments/sbi_sweep.py --tasks two_moons gaussian_mixture --seeds 0 1 2 \
  --methods jeffreys_npe jeffreys_npe_langevin --device cuda --jobs 6 --train-kwargs "$jkw" \
  --out "$out/jeffreys" "${common[@]}" > "$out/jeffreys.log" 2>&1 &
timeout "$limit" python3 experiments/sbi_sweep.py --tasks slcp gaussian_linear_uniform --seeds 0 \
  --methods npe jeffreys_npe jeffreys_npe_langevin --device cuda --jobs 2 --train-kwargs "$jkw" \
  --out "$out/extra" "${common[@]}" > "$out/extra.log" 2>&1 &
wait
python3 experiments/merge_sweeps.py --out "$out/merged" "$out/npe" "$out/jeffreys" "$out/extra" > "$out/merged.log" 2>&1
tail -n 30 "$out"/*.log
