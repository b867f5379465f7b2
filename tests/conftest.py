"""Session-wide test settings.

The models in the test suite are tiny; on the shared 2-core machine torch's default of one
intra-op thread per core spin-waits and runs them ~20x slower than a single thread. So the
whole session runs torch with one thread, set at import (before any test module is
collected).
"""

from __future__ import annotations

import os

import torch

torch.set_num_threads(1)
# subprocesses started by tests (the tutorial's kernel, sweep units) inherit this
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
