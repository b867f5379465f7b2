r"""The training loop of Algorithm 3, agnostic of conditioning.

The engine sees batches ``(inputs, context-or-None)``, a flow :math:`p_\theta` and an energy
:math:`f_\psi` with the ``(S, C, d)`` interface of :mod:`sbi_jeffreys.nets`, and the dual state.
Each step: draw M proposal samples per condition under stop-gradient and estimate
:math:`\log\zeta` (Alg. 2); draw reverse-KL samples (reparameterized or stop-gradient);
backpropagate the primal surrogate (eqs. 15, 18); take Adam steps for θ and ψ; ascend λ (eq. 19).

The step's Monte Carlo terms and their design choices (one shared draw or separate
reverse-KL samples, the flow-tilted proxy, the pooled energy call) live in
:mod:`sbi_jeffreys.loss`; the equations in :mod:`sbi_jeffreys.objective`. Each step refreshes
the EBM's spectral norm once. All per-step statistics stay on the device; the host syncs once
per log point.

The divergence guard and the state/RNG plumbing are in :mod:`sbi_jeffreys.trainer_state`, the
hyper-parameters and the data checks in :mod:`sbi_jeffreys.config`, B.8's warm start in
:mod:`sbi_jeffreys.warm_start`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from sbi_jeffreys.config import JeffreysConfig, check_data
from sbi_jeffreys.graphs import StepGraph
from sbi_jeffreys.loop import Batches, run_epochs
from sbi_jeffreys.loss import step_terms
from sbi_jeffreys.nets.ebm import is_flow_tilted, refresh_spectral_norm
from sbi_jeffreys.objective import MULTIPLIERS, DualState, Terms, constraint_slacks, primal_surrogate
from sbi_jeffreys.objective.lagrangian import constraint_values
from sbi_jeffreys.trainer_state import TrainerState, TrainingDivergedError, clone_state

__all__ = ["JeffreysConfig", "JeffreysTrainer", "TrainingDivergedError", "check_data"]


class JeffreysTrainer(TrainerState):
    """Gradient descent-ascent on the Lagrangian of eq. 11 (Algorithm 3).

    Args:
        flow: the main model; ``log_prob(inputs (S, C, d), condition)`` and
            ``sample_and_log_prob(shape, condition)`` as sbi's ``ConditionalDensityEstimator``.
        energy: the proxy; ``energy(inputs (S, C, d), condition) -> (S, C)``.
        config: :class:`JeffreysConfig`.
    """

    def __init__(self, flow: nn.Module, energy: nn.Module, config: JeffreysConfig | None = None):
        # the flow is duck-typed (sbi's ConditionalDensityEstimator methods), hence Any
        self.flow: Any = flow
        self.energy = energy
        self.config = config = config or JeffreysConfig()
        if config.zeta_every > 1 and is_flow_tilted(energy):
            # its log zeta = log E_p[e^g] needs samples of the current flow, not a stale draw
            raise ValueError("The flow-tilted proxy needs zeta_every=1 (fresh zeta samples every step).")
        device = next(flow.parameters()).device
        fixed = config.fixed_weights is not None  # (P-W): the multipliers frozen at the weights
        self.dual = DualState(
            init=config.multiplier_init,
            lr=0.0 if fixed else config.multiplier_lr,
            zeta_lr=0.0 if fixed else config.zeta_multiplier_lr,
            optimizer=config.multiplier_optimizer,
            negative_nll=config.negative_nll and not fixed,
            min_rv=0.0 if fixed else config.min_rv_multiplier,
            max_rv=None if fixed else config.max_rv_multiplier,
            min_rv_ratio=0.0 if fixed else config.min_rv_ratio,
            init_values=config.fixed_weights,
        ).to(device)
        # a recorded step keeps Adam's step counts on the device (capturable); CPU runs eagerly
        graph = config.cuda_graph and device.type == "cuda"
        self.opt_flow = torch.optim.Adam(
            flow.parameters(), lr=config.flow_lr, betas=config.flow_betas or config.betas, capturable=graph
        )
        self.opt_energy = torch.optim.Adam(
            energy.parameters(), lr=config.energy_lr, betas=config.betas, capturable=graph
        )
        if graph and self.dual.opt is not None:  # DualState builds its own Adam
            self.dual.opt.param_groups[0]["capturable"] = True
        self._graph = StepGraph(self._accumulated_step) if graph else None
        self._keys: list[str] | None = None  # step statistics, summed on the device in _acc
        self._acc: Tensor | None = None
        self.step_count = 0
        self.epoch = 0
        self.rollbacks = 0
        self.diverged = False  # rollbacks ran out; training stopped on the best validated state
        self.stopped_early = False  # the last fit() ended by early stopping
        self.history: dict[str, list[float]] = {}
        self.best: dict | None = None  # {"metric": float, "epoch": int, "flow": sd, "energy": sd}
        self._good: dict | None = None
        self._zeta_cache: tuple[Tensor, Tensor] | None = None

    # ------------------------------------------------------------------ one step
    def terms(self, inputs: Tensor, context: Tensor | None = None, reparameterized: bool | None = None) -> Terms:
        """Every quantity of eq. 11 for one batch (:func:`sbi_jeffreys.loss.step_terms`);
        ``reparameterized`` overrides the configured estimator (evaluation needs no rsample).
        Unconditionally with ``zeta_every = k > 1`` (D.3), the proposals are redrawn every k steps."""
        cfg = self.config
        reparam = cfg.gradient_estimator == "reparameterized" if reparameterized is None else reparameterized
        draw = None
        if context is None and cfg.zeta_every > 1:
            if self._zeta_cache is None:
                self._redraw_zeta(context)
            draw = self._zeta_cache
        return step_terms(
            self.flow, self.energy, inputs, context, cfg.num_zeta_samples, cfg.num_rv_samples, reparam, draw
        )

    def _redraw_zeta(self, context: Tensor | None) -> None:
        """D.3's proposals for ζ, redrawn every ``zeta_every`` steps (unconditional only). Drawn
        before the step, outside it, and copied into the same buffers: a step replayed as a CUDA
        graph cannot branch on the step count, but it reads whatever these buffers hold."""
        cfg = self.config
        if context is not None or cfg.zeta_every == 1:
            return
        if self._zeta_cache is not None and self.step_count % cfg.zeta_every != 0:
            return
        self.flow.train()
        with torch.no_grad():
            draw = self.flow.sample_and_log_prob((cfg.num_zeta_samples,), context)
        if self._zeta_cache is None:
            self._zeta_cache = draw
        else:
            for buffer, new in zip(self._zeta_cache, draw):
                buffer.copy_(new)

    def step(self, inputs: Tensor, context: Tensor | None = None) -> dict[str, Tensor]:
        """One GDA step; returns detached 0-d device tensors (no host sync)."""
        self._redraw_zeta(context)
        stats = self._gda_step(inputs, context)
        self.step_count += 1
        return stats

    def _gda_step(self, inputs: Tensor, context: Tensor | None) -> dict[str, Tensor]:
        cfg = self.config
        self.flow.train(), self.energy.train()
        lam = self.dual.value.clone()
        # one power iteration per optimizer step: every energy call of this step then sees the
        # same normalized weights (a call-by-call iteration biases every constraint)
        refresh_spectral_norm(self.energy)
        t = self.terms(inputs, context)
        loss = primal_surrogate(t, lam, cfg.kl_weight, cfg.score_baseline, cfg.zeta_constraint, cfg.eps_zeta)
        self.opt_flow.zero_grad(set_to_none=True)
        self.opt_energy.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_max_norm is not None:
            nn.utils.clip_grad_norm_(self.flow.parameters(), cfg.clip_max_norm)
            nn.utils.clip_grad_norm_(self.energy.parameters(), cfg.clip_max_norm)
        self.opt_flow.step()
        self.opt_energy.step()
        values = constraint_values(t, cfg.kl_weight)
        slacks = constraint_slacks(values, lam, cfg.eps_zeta, cfg.negative_nll, cfg.zeta_constraint)
        self.dual.ascend(slacks)
        stats = dict(values)
        stats.update({f"lambda_{n}": lam[i] for i, n in enumerate(MULTIPLIERS)})
        stats.update({f"slack_{n}": slacks[i] for i, n in enumerate(MULTIPLIERS)})
        return stats

    def train_step(self, inputs: Tensor, context: Tensor | None = None) -> None:
        """One GDA step whose statistics are summed on the device until :meth:`read_statistics`;
        replayed as a CUDA graph with ``config.cuda_graph`` on a CUDA device."""
        self._redraw_zeta(context)
        if self._graph is not None:
            self._graph(inputs, context)
        else:
            self._accumulated_step(inputs, context)
        self.step_count += 1

    def _accumulated_step(self, inputs: Tensor, context: Tensor | None) -> None:
        stats = self._gda_step(inputs, context)
        if self._keys is None:
            self._keys = list(stats)
            self._acc = torch.zeros(len(self._keys), device=inputs.device)
        assert self._acc is not None
        self._acc.add_(torch.stack([stats[k] for k in self._keys]))

    def read_statistics(self, count: int) -> dict[str, float]:
        """The step statistics averaged over the last ``count`` steps (one host sync); resets the sums."""
        if self._acc is None or self._keys is None or count == 0:
            return {}
        values = (self._acc / count).tolist()
        self._acc.zero_()  # in place: a recorded step adds into this very tensor
        return dict(zip(self._keys, values))

    @torch.no_grad()
    def evaluate(self, inputs: Tensor, context: Tensor | None = None, batch_size: int = 10_000) -> dict[str, float]:
        """Held-out metrics: NLL of :math:`p_\\theta`, NLL of :math:`q_\\psi` (with a fresh ζ
        estimate per condition), KL and log ζ, averaged over mini-batches."""
        self.flow.eval(), self.energy.eval()
        sums: dict[str, float] = {}
        n = inputs.shape[0]
        for i in range(0, n, batch_size):
            x = inputs[i : i + batch_size]
            c = None if context is None else context[i : i + batch_size]
            t = self.terms(x, c, reparameterized=False)
            for key, v in constraint_values(t, self.config.kl_weight).items():
                sums[key] = sums.get(key, 0.0) + float(v) * x.shape[0] / n
        return {f"val_{k}": v for k, v in sums.items()}

    # ------------------------------------------------------------------ the loop
    def fit(
        self,
        batches: Batches,
        max_epochs: int,
        validate: Callable[[], dict[str, float]] | None = None,
        monitor: str = "val_nll_p",
        stop_after_epochs: int | None = None,
        log_every: int = 1,
        show_progress: bool = True,
        on_log: Callable[[int, dict[str, float]], None] | None = None,
        checkpoint: Callable[["JeffreysTrainer"], None] | None = None,
    ) -> dict[str, list[float]]:
        """Run epochs until ``max_epochs`` (counting those already done, so a resumed run
        continues where it stopped) or early stopping on ``monitor`` (lower is better).

        Every ``log_every`` epochs: average the step statistics, run ``validate``, check for
        divergence (rolling back to the last good state, halving the learning rates, at most
        ``config.max_rollbacks`` times), record the history, call ``on_log`` and ``checkpoint``.
        At the end the best state under ``monitor`` (if validated) is restored.
        """
        self.stopped_early = False
        if self._good is None:
            self._good = self._snapshot()  # so that even the first log point can roll back

        def log(record: dict[str, float], bar) -> bool:
            if validate is not None:
                record.update(validate())
            if not self._healthy(record):
                # rolled back: train on; rollbacks spent: stop, the best state is restored below
                return self._rollback(record)
            self._good = self._snapshot()
            record["epoch"] = float(self.epoch)
            for key, v in record.items():
                self.history.setdefault(key, []).append(v)
            bar.set_postfix({k: f"{record[k]:.3g}" for k in ("nll_p", monitor, "log_zeta") if k in record})
            if monitor in record and (self.best is None or record[monitor] < self.best["metric"]):
                self.best = {
                    "metric": record[monitor],
                    "epoch": self.epoch,
                    "flow": clone_state(self.flow.state_dict()),
                    "energy": clone_state(self.energy.state_dict()),
                }
            if on_log is not None:
                on_log(self.epoch, record)
            if checkpoint is not None:
                checkpoint(self)
            if stop_after_epochs is not None and self.best is not None:
                self.stopped_early = self.epoch - self.best["epoch"] >= stop_after_epochs
            return not self.stopped_early

        run_epochs(self, batches, max_epochs, log, log_every, show_progress, "Jeffreys training")
        if self.best is not None:
            self.flow.load_state_dict(self.best["flow"])
            self.energy.load_state_dict(self.best["energy"])
        return self.history
