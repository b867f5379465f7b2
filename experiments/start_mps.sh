# Sourced by the device scripts: start CUDA MPS where the host has it (and NO_MPS is unset), so
# that processes sharing a GPU run their small kernels side by side instead of taking turns.
if command -v nvidia-cuda-mps-control >/dev/null && [ -z "${NO_MPS:-}" ]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if nvidia-cuda-mps-control -d && python3 -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
    echo "CUDA MPS: on"
  else
    echo quit | nvidia-cuda-mps-control; unset CUDA_MPS_PIPE_DIRECTORY; echo "CUDA MPS: failed, off"
  fi
else
  echo "CUDA MPS: not available"
fi
