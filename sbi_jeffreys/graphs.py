r"""Replaying a whole training step as one CUDA graph.

The paper's 2D models are tiny: a step is thousands of small kernels, and on a GPU its cost is
the host launching them, not the device running them (``benchmarks/sbi_step_speed.py``).
Recording the step once and replaying the recording removes that host cost. A recorded step
must be *graph-safe*: no host synchronisation (``.item()``, ``bool(tensor)``, data-dependent
shapes), no Python control flow on tensor values, optimizers built with ``capturable=True``; its
Python side effects (counters) happen only while it is recorded, so keep them outside ``fn``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["StepGraph"]


def _key(inputs: tuple[Tensor | None, ...]) -> tuple:
    return tuple(None if x is None else (x.shape, x.dtype, x.device) for x in inputs)


class _Recording:
    """One shape's warm-up count, recorded graph and static input buffers."""

    def __init__(self) -> None:
        self.warm = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[Tensor | None, ...] = ()


class StepGraph:
    r"""Call ``fn(*inputs)`` as a replayed CUDA graph.

    The first ``warmup`` calls run ``fn`` eagerly on a side stream (lazy initialisations such as
    optimizer states and library handles must happen outside a recording); the next call records
    ``fn`` and replays the recording at once (recording does not execute it); every later call
    copies its inputs into the recording's static buffers (unless they are those buffers) and
    replays. Each input shape gets its own warm-up and recording (a data loader's ragged last
    batch is a second shape, not a reason to record the full batch again). :meth:`reset` forgets
    every recording; it must follow anything that replaces tensors the recordings read (an
    optimizer's ``load_state_dict``, a new learning rate: plain floats are baked into a recording).
    Each call thus runs ``fn`` exactly once, on the device's current stream.

    Args:
        fn: one graph-safe training step; its return value is ignored.
        warmup: eager calls per shape before recording (PyTorch's examples use 3).
    """

    def __init__(self, fn: Callable[..., object], warmup: int = 3):
        self.fn, self.warmup = fn, warmup
        self.reset()

    def reset(self) -> None:
        """Forget every recording (and their memory pools)."""
        self._recordings: dict[tuple, _Recording] = {}

    @property
    def num_recordings(self) -> int:
        return sum(r.graph is not None for r in self._recordings.values())

    @property
    def recorded(self) -> bool:
        return self.num_recordings > 0

    def __call__(self, *inputs: Tensor | None) -> None:
        # streams and recordings belong to the inputs' GPU, whatever the current device
        with torch.cuda.device(next(x.device for x in inputs if x is not None)):
            self._call(inputs)

    def _call(self, inputs: tuple[Tensor | None, ...]) -> None:
        rec = self._recordings.setdefault(_key(inputs), _Recording())
        if rec.graph is None and rec.warm < self.warmup:
            rec.warm += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.fn(*inputs)
            torch.cuda.current_stream().wait_stream(side)
            return
        if rec.graph is None:
            rec.static = tuple(None if x is None else x.detach().clone() for x in inputs)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.fn(*rec.static)
            rec.graph = graph
        for buf, x in zip(rec.static, inputs):
            if buf is not None and x is not None and x.data_ptr() != buf.data_ptr():
                buf.copy_(x)
        rec.graph.replay()
