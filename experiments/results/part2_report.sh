#!/usr/bin/env bash
# Rebuild experiments/results/part2_h200 from the part-2 run folders (RUN = the --out of
#   python experiments/launch.py experiments/configs/part2.json --out RUN \
#       --resume-from experiments/results/part1_h200/results.csv
# ) and part 1's results. Registry names changed after the run: the run's jeffreys_npe_tilted_proxy
# is today's jeffreys_npe_proxy, jeffreys_npe_tilted is jeffreys_npe_flow, and part 1's jeffreys_npe (the
# paper's free EBM) is jeffreys_npe_free. t1k_norv (max_rv_multiplier=0) gets the suffix _no_rv.
# Until 2026-12-03 jeffreys_npe meant the proxy's posterior (now jeffreys_npe_proxy; both csv files
# were relabelled then); since, it is sample_with="auto", derived here (--select-by-gain) for
# every training that recorded its held-out proxy_gain.
# Cells run in later sessions (experiments/results/part2_h200/later_cells.csv: where each ran is
# in docs/results.md) are merged last; without RUN, only those are merged into the table as it is.
set -euo pipefail
OUTDIR=experiments/results/part2_h200
LATER=$OUTDIR/later_cells.csv
ARGS=(--method jeffreys_npe jeffreys_npe_proxy jeffreys_npe_flow --baselines npe_nsf jeffreys_npe_flow jeffreys_npe_proxy_no_rv jeffreys_npe_flow_no_rv
  --select-by-gain jeffreys_npe_proxy jeffreys_npe_flow jeffreys_npe --out $OUTDIR)
if [ $# -eq 0 ]; then
  python experiments/paired_report.py $OUTDIR/results.csv $LATER "${ARGS[@]}"
  exit 0
fi
RUN=$1
P1=experiments/results/part1_h200/results.csv
rl() { for f in "$@"; do echo --relabel "$f" jeffreys_npe jeffreys_npe_free --relabel "$f" jeffreys_npe_tilted jeffreys_npe_flow \
  --relabel "$f" jeffreys_npe_tilted_proxy jeffreys_npe_proxy; done; }
python experiments/paired_report.py $P1 "$RUN"/npe_fill/results.csv "$RUN"/t1k/results.csv "$RUN"/t10k/results.csv \
  $(rl $P1 "$RUN"/npe_fill/results.csv "$RUN"/t1k/results.csv "$RUN"/t10k/results.csv "$RUN"/t1k_norv/results.csv) \
  --tag "$RUN"/t1k_norv/results.csv _no_rv \
  "${ARGS[@]}"
python experiments/paired_report.py $OUTDIR/results.csv $LATER "${ARGS[@]}"
