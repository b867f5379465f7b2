"""The epoch loop every trainer here shares (the dual's :class:`~sbi_jeffreys.engine.JeffreysTrainer`
and the maximum-likelihood :class:`~sbi_jeffreys.baselines.NFDensityEstimator`).

It only orchestrates: run the steps of each epoch, and every ``log_every`` epochs (and at the
last) hand the step statistics averaged since the last log point to ``on_log``, which validates,
records, checkpoints or stops. Statistics stay on the device between log points, so the host
syncs once per log point.
"""

from __future__ import annotations

from typing import Callable, Iterable, Protocol

from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["Batches", "Steppable", "run_epochs"]

Batches = Callable[[], Iterable[tuple[Tensor, Tensor | None]]]


class Steppable(Protocol):
    epoch: int  # epochs done; ``on_log`` may move it (a rollback restores an earlier epoch)

    def train_step(self, inputs: Tensor, context: Tensor | None = None) -> None: ...

    def read_statistics(self, count: int) -> dict[str, float]: ...


def run_epochs(
    trainer: Steppable,
    batches: Batches,
    max_epochs: int,
    on_log: Callable[[dict[str, float], tqdm], bool],
    log_every: int = 1,
    show_progress: bool = True,
    desc: str = "training",
) -> None:
    """Train until ``trainer.epoch`` reaches ``max_epochs`` (a resumed trainer continues where it
    stopped) or ``on_log(record, bar)`` returns False. ``max_epochs`` above 10^7 is sbi's "no
    limit" (no total on the progress bar)."""
    bar = tqdm(
        total=None if max_epochs > 10**7 else max_epochs,
        initial=trainer.epoch,
        disable=not show_progress,
        desc=desc,
    )
    count = 0
    try:
        while trainer.epoch < max_epochs:
            for x, c in batches():
                trainer.train_step(x, c)
                count += 1
            if count == 0:
                raise ValueError("The training batches are empty: no data to train on.")
            trainer.epoch += 1
            bar.update(1)
            if trainer.epoch % log_every and trainer.epoch < max_epochs:
                continue
            record = trainer.read_statistics(count)
            count = 0
            if not on_log(record, bar):
                break
    finally:
        bar.close()
