#!/usr/bin/env bash
# The one run behind the README's SBI table (issues 3 and 4), on a host with many CPU cores
# and one or more GPUs: every training runs single-threaded on a CPU core (where these small
# networks are fastest), JeffreysNPE's posteriors sample on the GPUs (Langevin chains of all
# ten observations in one batch), C2STs are scored in parallel, then everything is merged.
#   bash experiments/device_sweep.sh OUT LIMIT_S [GPU...]
# NPE always trains with sbi's defaults. JeffreysNPE uses its defaults at 10^3 and
# batch 1000 with at most J10K_EPOCHS (default 150) epochs at 10^4 (near 15 min a training).
# Plan LIMIT_S for the slowest cell: a 10^4 JeffreysNPE training plus 20 C2STs.
set -u
out=$1; limit=$2; shift 2
gpus=(${*:-cuda:0})
mkdir -p "$out"
# fail at once, not after the sweeps' first imports, if the packages are missing
python3 -c "import sbi, sbibm, zuko, sbi_jeffreys" || { echo "sbi, sbibm, zuko or sbi_jeffreys missing" >&2; exit 1; }
j10k="{\"training_batch_size\":1000,\"max_num_epochs\":${J10K_EPOCHS:-150}}"
sweep() {  # NAME ARGS...: one sweep into $out/NAME, logged to $out/NAME.log
  local name=$1; shift
  timeout "$limit" python3 experiments/sbi_sweep.py --device cpu --sample-devices "${gpus[@]}" \
    --c2st-jobs 3 --no-progress --out "$out/$name" "$@" > "$out/$name.log" 2>&1 &
}
main=(--tasks two_moons gaussian_mixture --seeds 0 1 2)
extra=(--tasks slcp gaussian_linear_uniform --seeds 0)
sweep j10k "${main[@]}" --budgets 10000 --methods jeffreys_npe jeffreys_npe_langevin --jobs 6 --train-kwargs "$j10k"
sweep j10k_extra "${extra[@]}" --budgets 10000 --methods jeffreys_npe jeffreys_npe_langevin --jobs 2 --train-kwargs "$j10k"
sweep j1k "${main[@]}" --budgets 1000 --methods jeffreys_npe jeffreys_npe_langevin --jobs 6
sweep j1k_extra "${extra[@]}" --budgets 1000 --methods jeffreys_npe jeffreys_npe_langevin --jobs 2
sweep npe "${main[@]}" --budgets 1000 10000 --methods npe --jobs 6
sweep npe_extra "${extra[@]}" --budgets 1000 10000 --methods npe --jobs 2
wait
python3 experiments/merge_sweeps.py --out "$out/merged" "$out"/j10k "$out"/j10k_extra "$out"/j1k \
  "$out"/j1k_extra "$out"/npe "$out"/npe_extra > "$out/merged.log" 2>&1
tail -n 5 "$out"/*.log
