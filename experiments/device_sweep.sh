#!/usr/bin/env bash
# The one run behind the README's SBI table (issues 3 and 4) and 2D density table (issue 2), on
# a host with many CPU cores and one or more GPUs.
#   bash experiments/device_sweep.sh OUT LIMIT_S [GPU...]
# Where each piece runs, by measured speed (benchmarks/sbi_step_speed.py on an idle H200 host):
# * JeffreysNPE at 10^4 (batch 1000, M=16) trains on the GPUs, 2.8x faster there than on a core;
# * JeffreysNPE at 10^3 (batch 200) and every NPE train single-threaded on CPU cores (as fast);
# * JeffreysNPE posteriors sample on the GPUs (Langevin chains of all observations in one batch);
# * C2STs are scored in parallel, one BLAS thread each;
# * the 2D density runs take one CPU core each (8.7 it/s on the GPU against 6.3 on a core:
#   launch-bound), DENSITY_ITERS iterations (default 4000; the paper's 25,000 do not fit).
# NPE always trains with sbi's defaults. JeffreysNPE uses its defaults at 10^3 and batch 1000 with
# at most J10K_EPOCHS (default 150) epochs at 10^4. Everything is killed at LIMIT_S seconds.
set -u
out=$1; limit=$2; shift 2
gpus=(${*:-cuda:0})
rgpus=$(printf "%s\n" "${gpus[@]}" | tac | tr "\n" " ")  # the extra tasks start on the last GPUs
mkdir -p "$out"
# fail at once, not after the sweeps' first imports, if the packages are missing
python3 -c "import sbi, sbibm, zuko, sbi_jeffreys" || { echo "sbi, sbibm, zuko or sbi_jeffreys missing" >&2; exit 1; }
j10k="{\"training_batch_size\":1000,\"max_num_epochs\":${J10K_EPOCHS:-150}}"
sweep() {  # NAME TRAIN_DEVICES ARGS...: one sweep into $out/NAME, logged to $out/NAME.log
  local name=$1 train=$2; shift 2
  timeout "$limit" python3 experiments/sbi_sweep.py --devices $train --sample-devices "${gpus[@]}" \
    --c2st-jobs 2 --no-progress --out "$out/$name" "$@" > "$out/$name.log" 2>&1 &
}
main=(--tasks two_moons gaussian_mixture --seeds 0 1 2)
extra=(--tasks slcp gaussian_linear_uniform --seeds 0)
jeffreys=(--methods jeffreys_npe jeffreys_npe_langevin)
sweep j10k "${gpus[*]}" "${main[@]}" --budgets 10000 "${jeffreys[@]}" --jobs 6 --train-kwargs "$j10k"
sweep j10k_extra "$rgpus" "${extra[@]}" --budgets 10000 "${jeffreys[@]}" --jobs 2 --train-kwargs "$j10k"
sweep j1k cpu "${main[@]}" --budgets 1000 "${jeffreys[@]}" --jobs 6
sweep j1k_extra cpu "${extra[@]}" --budgets 1000 "${jeffreys[@]}" --jobs 2
sweep npe cpu "${main[@]}" --budgets 1000 10000 --methods npe --jobs 8
sweep npe_extra cpu "${extra[@]}" --budgets 1000 10000 --methods npe --jobs 2
timeout "$limit" python3 experiments/density2d.py --device cpu --jobs 18 --threads 1 --seeds 0 1 2 \
  --iterations "${DENSITY_ITERS:-4000}" --out "$out/density2d" > "$out/density2d.log" 2>&1 &
wait
python3 experiments/merge_sweeps.py --out "$out/merged" "$out"/j10k "$out"/j10k_extra "$out"/j1k \
  "$out"/j1k_extra "$out"/npe "$out"/npe_extra > "$out/merged.log" 2>&1
tail -n 5 "$out"/*.log
