r"""Replaying a whole training step as one CUDA graph.

The paper's 2D models are tiny: a step is thousands of small kernels, and on a GPU its cost is
the host launching them, not the device running them (DESIGN §9). Recording the step once and
replaying the recording removes that host cost. A recorded step must be *graph-safe*: no host
synchronisation (``.item()``, ``bool(tensor)``, data-dependent shapes), no Python control flow
on tensor values, optimizers built with ``capturable=True``; its Python side effects (counters)
happen only while it is recorded, so keep them outside ``fn``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["StepGraph"]


def _key(inputs: tuple[Tensor | None, ...]) -> tuple:
    return tuple(None if x is None else (x.shape, x.dtype, x.device) for x in inputs)


class StepGraph:
    r"""Call ``fn(*inputs)`` as a replayed CUDA graph.

    The first ``warmup`` calls run ``fn`` eagerly on a side stream (lazy initialisations such as
    optimizer states and library handles must happen outside a recording); the next call records
    ``fn`` and replays the recording at once (recording does not execute it); every later call
    copies its inputs into the recording's static buffers (unless they are those buffers) and
    replays. Inputs of other shapes start over (warm-up, new recording); so does :meth:`reset`,
    which must follow anything that replaces tensors the recording reads (an optimizer's
    ``load_state_dict``, a new learning rate: plain floats are baked into the recording).
    Each call thus runs ``fn`` exactly once, on the device's current stream.

    Args:
        fn: one graph-safe training step; its return value is ignored.
        warmup: eager calls before recording (PyTorch's examples use 3).
    """

    def __init__(self, fn: Callable[..., object], warmup: int = 3):
        self.fn, self.warmup = fn, warmup
        self.reset()

    def reset(self) -> None:
        """Forget the recording (and its memory pool)."""
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[Tensor | None, ...] = ()
        self._warm = 0
        self._key: tuple | None = None

    @property
    def recorded(self) -> bool:
        return self.graph is not None

    def __call__(self, *inputs: Tensor | None) -> None:
        # streams and recordings belong to the inputs' GPU, whatever the current device
        with torch.cuda.device(next(x.device for x in inputs if x is not None)):
            self._call(inputs)

    def _call(self, inputs: tuple[Tensor | None, ...]) -> None:
        key = _key(inputs)
        if key != self._key:
            self.reset()
            self._key = key
        if self.graph is None and self._warm < self.warmup:
            self._warm += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.fn(*inputs)
            torch.cuda.current_stream().wait_stream(side)
            return
        if self.graph is None:
            self.static = tuple(None if x is None else x.detach().clone() for x in inputs)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.fn(*self.static)
            self.graph = graph
        for buf, x in zip(self.static, inputs):
            if buf is not None and x.data_ptr() != buf.data_ptr():
                buf.copy_(x)
        self.graph.replay()
