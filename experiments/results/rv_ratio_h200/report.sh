#!/usr/bin/env bash
# min_rv_ratio = 1 (lambda_rv >= lambda_fw) against the default multipliers at 10^3 on five tasks,
# paired by (seed, observation). t1k_ratio.csv: the t1k_ratio sweep of experiments/configs/part2.json
# (2026-12-03, eleventh session, the nvidia-h200 machine's CPU cores); the default rows are
# experiments/results/part2_h200/results.csv (same simulations per seed). Writes table.md here.
set -euo pipefail
D=experiments/results/rv_ratio_h200
R=$D/t1k_ratio.csv
python experiments/paired_report.py experiments/results/part2_h200/results.csv "$R" \
  --relabel "$R" jeffreys_npe jeffreys_npe_ratio1 --relabel "$R" jeffreys_npe_flow jeffreys_npe_flow_ratio1 \
  --relabel "$R" jeffreys_npe_proxy jeffreys_npe_proxy_ratio1 \
  --method jeffreys_npe_ratio1 jeffreys_npe_flow_ratio1 jeffreys_npe_proxy_ratio1 \
  --baselines jeffreys_npe jeffreys_npe_flow jeffreys_npe_proxy npe_nsf --out /tmp/rv_ratio_h200
# keep the 10^3 rows of the table only; the merged rows are the two inputs
python - <<'PY'
lines = open("/tmp/rv_ratio_h200/table.md").read().splitlines()
keep = [l for l in lines if not l.startswith("| ") or "| 1000 |" in l or l.startswith("| task")]
open("experiments/results/rv_ratio_h200/table.md", "w").write("\n".join(keep) + "\n")
PY
