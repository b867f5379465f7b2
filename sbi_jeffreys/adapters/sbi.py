r"""``JeffreysNPE``: neural posterior estimation by adaptive symmetrization of the KL (App. B.6).

A conditional flow :math:`p_\theta(\theta\mid x)` (by default sbi's coupling NSF, the flow of
``NPE(density_estimator="nsf")``, with sbi's z-scoring and embedding nets) and a FiLM-conditioned
proxy :math:`f_\psi(\theta, x)` (by default flow-tilted, :math:`\log p_{\bar\theta} + g_\psi`;
or the paper's free EBM) are trained by the engine's gradient descent-ascent, with
per-condition partition functions :math:`\zeta(x_i)` estimated from :math:`p_\theta(\cdot\mid x_i)`
for every condition of the batch in one vectorized call, each kept near 1 by a per-condition
constraint (or B.6's box on their batch average). Everything else is sbi's:
``append_simulations`` and its invalid-x handling, the train/validation split, the tracker, and
``DirectPosterior`` for ``sample_with="flow"``. The default posterior resamples the proxy
:math:`q = p_\theta e^{g}/\zeta` from flow samples (:class:`ImportancePosterior`) when the
proxy's held-out log-likelihood beats the flow's (:meth:`JeffreysNPE.proxy_gain`), and samples
the flow otherwise.

Most of this module is sbi's API surface (``train``'s documented signature, the checks sbi leaves
out); the options are :mod:`sbi_jeffreys.adapters.options`, the choice and construction of the
posterior :mod:`sbi_jeffreys.adapters.selection`, checkpoints and loading
:mod:`sbi_jeffreys.adapters.checkpoint`.
"""

from __future__ import annotations

import os
import time
import warnings
from copy import deepcopy
from dataclasses import fields
from typing import Any, Callable, Literal

import torch
from sbi.inference.trainers.npe.npe_base import PosteriorEstimatorTrainer
from sbi.neural_nets.estimators import NFlowsFlow
from sbi.utils import within_support
from torch import Tensor, nn
from torch.distributions import Distribution

from sbi_jeffreys.adapters.checkpoint import (
    check_same_run,
    load_inference,
    read_checkpoint,
    to_device,
    write_checkpoint,
)
from sbi_jeffreys.adapters.options import JeffreysOptions
from sbi_jeffreys.adapters.selection import held_out_gain, make_posterior
from sbi_jeffreys.engine import JeffreysTrainer
from sbi_jeffreys.nets.ebm import energy_nn, is_flow_tilted
from sbi_jeffreys.nets.flows import reparameterized
from sbi_jeffreys.warm_start import warm_start_energy

#: The paper's App. D.4 settings, a documented preset (``JeffreysNPE(...).train(**PAPER_D4)``).
PAPER_D4: dict[str, Any] = dict(training_batch_size=1000, learning_rate=1e-4, options=JeffreysOptions.paper_d4())

_D = JeffreysOptions()  # the one source of the dual's defaults


class JeffreysNPE(PosteriorEstimatorTrainer):
    r"""Neural posterior estimation with a Jeffreys-symmetrized objective.

    Same call sequence as sbi's ``NPE``::

        inference = JeffreysNPE(prior)
        inference.append_simulations(theta, x).train()
        posterior = inference.build_posterior()          # q = p e^g by importance resampling
        samples = posterior.sample((10_000,), x=x_o)

    Args:
        prior: the prior (a torch distribution on ``device``).
        density_estimator: ``"nsf"`` (the default: sbi's coupling NSF, the flow of NPE's
            ``density_estimator="nsf"``; any sbi model name works) or a builder
            ``(theta, x) -> ConditionalDensityEstimator`` (e.g. ``sbi.neural_nets.posterior_nn``).
            nflows-based estimators get a correct reparameterized ``sample_and_log_prob``
            (:func:`sbi_jeffreys.nets.flows.reparameterized`); zuko-based ones have one.
        energy_estimator: ``"flow_tilted"`` (the default: the proxy :math:`\log p_{\bar\theta} + g_\psi`,
            :mod:`sbi_jeffreys.objective.tilted`), ``"film_resnet"`` (the paper's free EBM) or a builder
            ``(theta, x) -> nn.Module`` mapping ``(S, B, d)`` parameters and ``(B, k)`` conditions
            to ``(S, B)`` log-unnormalized densities (see :func:`sbi_jeffreys.nets.energy_nn`).
        device, logging_level, summary_writer, tracker, show_progress_bars: as in sbi.
    """

    def __init__(
        self,
        prior: Distribution | None = None,
        density_estimator: str | Callable = "nsf",
        energy_estimator: str | Callable = "flow_tilted",
        device: str = "cpu",
        logging_level: int | str = "WARNING",
        summary_writer=None,
        tracker=None,
        show_progress_bars: bool = True,
    ):
        super().__init__(
            prior=prior,
            density_estimator=density_estimator,
            device=device,
            logging_level=logging_level,
            summary_writer=summary_writer,
            tracker=tracker,
            show_progress_bars=show_progress_bars,
        )
        # the engine draws reparameterized samples for many conditions at once: sbi's nflows
        # estimators need their sample_and_log_prob fixed for that (nets.flows.reparameterized)
        build_flow: Callable = self._build_neural_net  # type: ignore[has-type]
        self._build_neural_net = lambda theta, x: reparameterized(build_flow(theta, x))
        self._build_energy = energy_nn(energy_estimator) if isinstance(energy_estimator, str) else energy_estimator
        self._energy_estimator_name = energy_estimator if isinstance(energy_estimator, str) else None
        self._energy_net: nn.Module | None = None
        self._trainer: JeffreysTrainer | None = None
        self._proxy_gain: dict[str, float] | None = None  # proxy_gain()'s cache, reset by train()

    # ------------------------------------------------------------------ data
    def append_simulations(
        self,
        theta: Tensor,
        x: Tensor,
        proposal: Any = None,
        exclude_invalid_x: bool | None = None,
        data_device: str | None = None,
    ) -> "JeffreysNPE":
        """Store simulations with sbi's checks, plus the checks sbi leaves out: theta must be
        finite, match the prior's dimension and lie inside its support. Invalid x (NaN/inf)
        are excluded as sbi's NPE does and their count is reported."""
        if proposal is not None and proposal is not self._prior:
            raise NotImplementedError(
                "JeffreysNPE is single-round: pass simulations drawn from the prior (proposal=None)."
            )
        if not isinstance(theta, Tensor) or not isinstance(x, Tensor):
            raise TypeError(f"theta and x must be torch.Tensors, got {type(theta).__name__} and {type(x).__name__}.")
        if theta.shape[0] != x.shape[0]:
            raise ValueError(
                f"theta and x must have the same number of simulations, got {theta.shape[0]} and {x.shape[0]}."
            )
        if theta.shape[0] == 0:
            raise ValueError("append_simulations() received no simulations.")
        theta = theta.float() if theta.is_floating_point() else theta
        if not theta.is_floating_point():
            raise TypeError(f"theta must be a floating-point tensor, got {theta.dtype}.")
        if not torch.isfinite(theta).all():
            raise ValueError(f"theta contains {int((~torch.isfinite(theta)).any(-1).sum())} rows with NaN or inf.")
        if self._prior is not None:
            event = self._prior.event_shape.numel() if len(self._prior.event_shape) else 1
            if theta.reshape(theta.shape[0], -1).shape[1] != event:
                raise ValueError(
                    f"theta has {theta.reshape(theta.shape[0], -1).shape[1]} dimensions, the prior {event}."
                )
            outside = ~within_support(self._prior, theta.to(self._device))
            if outside.any():
                raise ValueError(f"{int(outside.sum())} of {theta.shape[0]} theta lie outside the prior's support.")
        valid = torch.isfinite(x.reshape(x.shape[0], -1)).all(-1)
        if not valid.any():
            raise ValueError(f"All {x.shape[0]} simulations x contain NaN or inf: nothing to train on.")
        excluded = int((~valid).sum())
        super().append_simulations(
            theta, x, proposal=None, exclude_invalid_x=exclude_invalid_x, data_device=data_device
        )
        self._num_excluded = getattr(self, "_num_excluded", 0) + (excluded if exclude_invalid_x is not False else 0)
        return self

    def _log_prob_proposal_posterior(self, *args, **kwargs):
        raise NotImplementedError("JeffreysNPE is single-round.")

    # ------------------------------------------------------------------ training
    def train(
        self,
        training_batch_size: int = 200,
        learning_rate: float = 5e-4,
        validation_fraction: float = 0.1,
        stop_after_epochs: int = 20,
        max_num_epochs: int = 2**31 - 1,
        clip_max_norm: float | None = 5.0,
        resume_training: bool = False,
        retrain_from_scratch: bool = False,
        show_train_summary: bool = False,
        dataloader_kwargs: dict | None = None,
        force_first_round_loss: bool = False,
        *,
        energy_learning_rate: float = _D.energy_learning_rate,
        multiplier_learning_rate: float = _D.multiplier_learning_rate,
        zeta_multiplier_learning_rate: float = _D.zeta_multiplier_learning_rate,
        multiplier_optimizer: Literal["sgd", "adam"] = _D.multiplier_optimizer,
        multiplier_init: float = _D.multiplier_init,
        min_rv_multiplier: float = _D.min_rv_multiplier,
        max_rv_multiplier: float | None = _D.max_rv_multiplier,
        min_rv_ratio: float = _D.min_rv_ratio,
        early_stopping: Literal["flow", "proxy"] = _D.early_stopping,
        eps_zeta: float = _D.eps_zeta,
        zeta_constraint: Literal["box", "per_condition"] = _D.zeta_constraint,
        negative_nll: bool = _D.negative_nll,
        num_zeta_samples: int = _D.num_zeta_samples,
        num_rv_samples: int | None = _D.num_rv_samples,
        gradient_estimator: Literal["reparameterized", "score"] = _D.gradient_estimator,
        temperature_weighted_kl: bool = _D.temperature_weighted_kl,
        warm_start_steps: int = _D.warm_start_steps,
        flow_betas: tuple[float, float] = _D.flow_betas,
        energy_betas: tuple[float, float] = _D.energy_betas,
        cuda_graph: bool = _D.cuda_graph,
        flow_warmup: bool = _D.flow_warmup,
        options: JeffreysOptions | None = None,
        checkpoint_path: str | os.PathLike | None = None,
    ) -> nn.Module:
        r"""Train :math:`p_\theta` and :math:`q_\psi` by GDA (Algorithm 3) and return the flow.

        sbi's arguments mean what they mean for ``NPE``: ``learning_rate`` is the flow's; with
        ``resume_training=True``, ``max_num_epochs`` is the total epoch count, earlier calls
        included; reaching it before early stopping warns as sbi does;
        ``force_first_round_loss`` is accepted and has no effect (a single-round method).
        Early stopping watches the flow's validation NLL, :math:`-\frac1{N_v}\sum\log p_\theta(\theta_i\mid x_i)`:
        it is what ``posterior.sample`` draws from, is comparable across epochs while the
        multipliers move (the Lagrangian is not), and equals NPE's validation loss, so both
        stop by the same rule. The dual's own options: ``energy_learning_rate`` (ψ),
        ``multiplier_learning_rate`` (λ_fw, λ_rv, λ_prx), ``zeta_multiplier_learning_rate``,
        ``multiplier_optimizer``, ``multiplier_init``, ``min_rv_multiplier`` / ``max_rv_multiplier``
        (bounds on λ_rv; a cap of 0 turns the reverse KL off), ``min_rv_ratio`` (λ_rv ≥ r·λ_fw),
        ``early_stopping`` (``"flow"`` watches the flow's validation NLL, ``"proxy"`` the proxy's),
        ``eps_zeta`` (ζ box), ``zeta_constraint`` (``"per_condition"``: every condition's log ζ
        near 0; ``"box"``: B.6's batch mean), ``negative_nll`` (B.7),
        ``num_zeta_samples`` (M per condition), ``num_rv_samples`` (reverse-KL samples per
        condition; ``None`` reuses the M ζ-samples), ``gradient_estimator``,
        ``temperature_weighted_kl`` (eq. 22 with the EBM's temperature),
        ``warm_start_steps`` (B.8 warm start of :math:`f_\psi` onto :math:`\log p_\theta`, at most
        ten epochs' worth of batches),
        ``flow_betas`` / ``energy_betas`` (Adam; the flow defaults to torch's, as NPE, the EBM to
        the paper's (0, 0.9)). ``cuda_graph=True`` replays each training step as a CUDA graph
        (:mod:`sbi_jeffreys.graphs`): the same training, without the host's launch cost, which
        dominates these small networks' steps on a GPU; ignored on a CPU.
        ``flow_warmup=True`` first trains the flow with sbi's own NPE loop (``NPE.train`` with
        the sbi arguments above: its loss, optimizer and early stopping) and then runs the dual
        from that flow on the same train/validation split; ``train_seconds`` counts both phases.

        ``options`` passes all of the dual's options at once (:class:`JeffreysOptions`, e.g.
        ``JeffreysOptions.paper_d4()``); each keyword's default is its field's. Giving both
        ``options`` and a keyword that differs from its default is an error (which one wins
        would be a guess).

        ``checkpoint_path`` (not in sbi): write the complete training state there after every
        epoch, and, when the file exists, resume from it (same simulations and options, else an
        error); a finished training is not repeated
        (:mod:`sbi_jeffreys.adapters.checkpoint`).
        """
        keywords = locals()
        opts = JeffreysOptions(**{f.name: keywords[f.name] for f in fields(JeffreysOptions)})
        if options is not None:
            clash = opts.differences(_D)
            if clash:
                raise ValueError(f"Pass the dual's options either as keywords or as options=, not both: {clash}.")
            opts = options
        if not self._data_round_index:
            raise RuntimeError("No simulations found. You must call .append_simulations() before calling .train().")
        n = sum(t.shape[0] for t in self._theta_roundwise)
        if int((1 - validation_fraction) * n) < 1 or n - int((1 - validation_fraction) * n) < 1:
            raise ValueError(f"{n} simulations are too few for validation_fraction={validation_fraction}.")
        ckpt = read_checkpoint(checkpoint_path) if checkpoint_path is not None and self._trainer is None else None
        if ckpt is not None:
            self.train_indices, self.val_indices = ckpt["train_indices"], ckpt["val_indices"]
        resume = (resume_training and self._trainer is not None) or ckpt is not None
        warm_up = opts.flow_warmup and not resume
        warmup_seconds = 0.0
        if warm_up:
            warmup_seconds = self._warm_up_flow(
                training_batch_size, learning_rate, validation_fraction, stop_after_epochs,
                max_num_epochs, clip_max_norm, retrain_from_scratch, dataloader_kwargs,
            )  # fmt: skip
            retrain_from_scratch = False  # keep the warmed-up flow
        train_loader, val_loader = self.get_dataloaders(
            0, training_batch_size, validation_fraction, resume or opts.flow_warmup, dataloader_kwargs
        )
        fresh = self._neural_net is None or retrain_from_scratch or warm_up
        self._initialize_neural_network(retrain_from_scratch=retrain_from_scratch, start_idx=0)
        theta_all, x_all, _ = self.get_simulations(0)
        if fresh or self._energy_net is None:
            self._energy_net = self._build_energy(theta_all[self.train_indices].cpu(), x_all[self.train_indices].cpu())
        flow, energy = self._neural_net.to(self._device), self._energy_net.to(self._device)

        config = opts.engine_config(learning_rate, clip_max_norm, getattr(energy, "temperature", 1.0))
        if ckpt is not None:
            check_same_run(ckpt, theta_all, x_all, config)
            self._trainer = JeffreysTrainer(flow, energy, config)
            self._trainer.load_state_dict(to_device(ckpt["trainer"], self._device))
            self._summary.clear()
            self._summary.update(ckpt["summary"])
            self._num_excluded = int(ckpt["num_excluded"])
            self._proxy_gain = None
            if ckpt["finished"]:  # trained to the end before: the saved weights are the best ones
                self._best_val_loss = self._summary["best_validation_loss"][-1]
                return deepcopy(self._neural_net)
            self._summary.setdefault("resumed_at_epoch", []).append(self._trainer.epoch)
            # the epochs before the resume took this long (their durations are in the summary)
            self._summary.setdefault("resumed_after_seconds", []).append(sum(self._summary["epoch_durations_sec"]))
        if not resume:
            if config.cuda_graph and torch.device(self._device).type == "cuda" and isinstance(flow, NFlowsFlow):
                # nflows' splines index with data-dependent masks and its LU layers with host arrays
                raise ValueError(
                    "cuda_graph=True needs a flow whose step can be recorded: nflows' models (sbi's 'nsf', "
                    "'maf') cannot; use density_estimator=zuko_coupling_nsf() (sbi_jeffreys.nets.flows) "
                    "or a zuko model, or cuda_graph=False."
                )
            self._trainer = JeffreysTrainer(flow, energy, config)
            if opts.warm_start_steps > 0 and fresh and not is_flow_tilted(energy):  # a tilted proxy starts at q = p
                # scale with the data (at most 10 epochs' worth of batches, 4 samples per condition)
                # so that a small run pays no fixed cost for it
                steps = min(opts.warm_start_steps, 10 * max(1, len(train_loader)))
                warm_start_energy(
                    flow, energy, self._contexts(train_loader), steps=steps, num_samples=training_batch_size * 4
                )

        val_theta = theta_all[self.val_indices].to(self._device)
        val_x = x_all[self.val_indices].to(self._device)
        trainer = self._trainer
        assert trainer is not None
        start = time.time()
        epoch_start = [time.time()]
        earlier = self._summary["resumed_after_seconds"][-1] if ckpt is not None else 0.0

        def validate() -> dict[str, float]:
            return trainer.evaluate(val_theta, val_x, batch_size=training_batch_size)

        def on_log(epoch: int, record: dict[str, float]) -> None:
            now = time.time()
            self._summary["epoch_durations_sec"].append(now - epoch_start[0])
            epoch_start[0] = now
            self._summary["training_loss"].append(record["nll_p"])
            self._summary["validation_loss"].append(record["val_nll_p"])
            for key, value in record.items():
                self._summary.setdefault(key, []).append(value)
            self._tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)

        trainer.fit(
            lambda: ((t.to(self._device), x.to(self._device)) for t, x, _ in train_loader),
            max_epochs=max_num_epochs,  # as sbi: the total, counting epochs of earlier calls
            validate=validate,
            monitor="val_nll_q" if opts.early_stopping == "proxy" else "val_nll_p",
            stop_after_epochs=stop_after_epochs,
            show_progress=self._show_progress_bars,
            on_log=on_log,
            checkpoint=None if checkpoint_path is None else lambda _: write_checkpoint(self, checkpoint_path, False),
        )
        best = trainer.best["metric"] if trainer.best else float("nan")
        if trainer.epoch >= max_num_epochs and not trainer.stopped_early and not trainer.diverged:
            warnings.warn(
                f"Maximum number of epochs `max_num_epochs={max_num_epochs}` reached, "
                "but network has not yet fully converged. Consider increasing it.",
                UserWarning,
                stacklevel=2,
            )
        self._summary["epochs_trained"].append(trainer.epoch)
        self._summary["best_validation_loss"].append(best)
        self._summary.setdefault("train_seconds", []).append(time.time() - start + earlier + warmup_seconds)
        self._summary.setdefault("num_excluded_simulations", []).append(getattr(self, "_num_excluded", 0))
        self._summary.setdefault("diverged", []).append(trainer.diverged)
        self._best_val_loss = best
        self._proxy_gain = None  # a new training: the held-out gain is measured again
        self._tracker.flush()
        if checkpoint_path is not None:
            write_checkpoint(self, checkpoint_path, True)
        if show_train_summary:
            print(
                f"JeffreysNPE: {trainer.epoch} epochs, best validation NLL {best:.4f}, "
                f"lambda = {dict(zip(('fw', 'rv', 'prx', 'zu', 'zl'), trainer.dual.value.tolist()))}"
            )
        return deepcopy(self._neural_net)

    def _warm_up_flow(
        self,
        training_batch_size: int,
        learning_rate: float,
        validation_fraction: float,
        stop_after_epochs: int,
        max_num_epochs: int,
        clip_max_norm: float | None,
        retrain_from_scratch: bool,
        dataloader_kwargs: dict | None,
    ) -> float:
        """``flow_warmup``: sbi's NPE training of the flow on this object (its split, loss and
        early stopping); the energy and the dual start afresh from it. Returns the seconds spent."""
        start = time.time()
        PosteriorEstimatorTrainer.train(
            self,
            training_batch_size=training_batch_size,
            learning_rate=learning_rate,
            validation_fraction=validation_fraction,
            stop_after_epochs=stop_after_epochs,
            max_num_epochs=max_num_epochs,
            clip_max_norm=clip_max_norm,
            retrain_from_scratch=retrain_from_scratch,
            dataloader_kwargs=dataloader_kwargs,
        )
        self._energy_net, self._trainer = None, None
        self._summary.setdefault("warmup_epochs", []).append(self._summary["epochs_trained"].pop())
        self._summary.setdefault("warmup_validation_loss", []).append(self._summary["best_validation_loss"].pop())
        seconds = time.time() - start
        self._summary.setdefault("warmup_seconds", []).append(seconds)
        return seconds

    def _contexts(self, loader):
        while True:
            for _, x, _ in loader:
                yield x.to(self._device)

    # ------------------------------------------------------------------ posteriors
    def proxy_gain(self, num_zeta_samples: int = 256, max_pairs: int = 2000) -> dict[str, float]:
        r"""The proxy's held-out log-likelihood gain over the flow on the validation pairs:
        :math:`\frac1{N_v}\sum_i \log q_\psi(\theta_i\mid x_i) - \log p_\theta(\theta_i\mid x_i)`
        (:meth:`ProxyPosterior.log_ratio`, ``num_zeta_samples`` flow draws per pair for
        :math:`\hat\zeta`), with its standard error. It estimates
        :math:`\mathbb E_x[\mathrm{KL}(\pi\|p_\theta) - \mathrm{KL}(\pi\|q_\psi)]`: positive when the
        proxy is the better posterior on average over the prior predictive. At most ``max_pairs``
        validation pairs are used (the split is random; the standard error says what that costs).
        Cached per training; ``build_posterior(sample_with="auto")`` samples the proxy only when
        it is positive. ``nonfinite`` counts the pairs whose estimate is not finite (a spike of
        :math:`g` overflowing :math:`\hat\zeta`); with any, the mean is NaN and ``"auto"`` samples
        the flow."""
        if self._energy_net is None or self._neural_net is None:
            raise RuntimeError("Nothing trained yet: call .train() before .proxy_gain().")
        cached = self._proxy_gain
        if cached is not None and (cached["num_zeta_samples"], cached["max_pairs"]) == (num_zeta_samples, max_pairs):
            return dict(cached)
        theta_all, x_all, _ = self.get_simulations(0)
        pairs = self.val_indices[:max_pairs]
        nets = self._neural_net, self._energy_net, self._prior
        gain = held_out_gain(*nets, theta_all[pairs], x_all[pairs], num_zeta_samples, self._device)
        self._proxy_gain = {**gain, "num_zeta_samples": num_zeta_samples, "max_pairs": max_pairs}
        return dict(self._proxy_gain)

    def build_posterior(
        self,
        density_estimator: nn.Module | None = None,
        prior: Distribution | None = None,
        sample_with: Literal["flow", "proxy", "langevin", "auto"] | None = None,
        langevin_method: Literal["ula", "mala"] | None = None,
        num_steps: int = 2000,
        step_size: float | None = None,
        num_zeta_samples: int = 1000,
        oversampling: int = 16,
        langevin_space: Literal["theta", "latent"] | None = None,
        target_acceptance: float | None = None,
        device: str | torch.device | None = None,
        min_ess: float | None = None,
        **kwargs,
    ):
        r"""``sample_with=None`` means ``"auto"`` for the flow-tilted proxy and ``"flow"`` for the
        paper's free EBM (whose proxy is far worse than its flow). ``"auto"``: the proxy if its
        held-out log-likelihood gain over the flow (:meth:`proxy_gain`) is positive, else the
        flow (:mod:`sbi_jeffreys.adapters.selection`). Measured (docs/results.md, docs/tried.md):
        its sign names the better of the two wherever they differ by more than about 0.005 C2ST
        (at 10⁴ simulations on gaussian_linear_uniform and bernoulli_glm the proxy overfits,
        the gain is negative and the flow is the better posterior); its one large miss was a
        proxy whose rare spikes the held-out pairs did not hit, which ``min_ess`` catches.
        When ``"auto"`` picks the proxy, an observation whose importance weights degenerate
        (effective sample size below ``min_ess``, by default 1/``oversampling``: fewer
        effective draws than samples asked for) gets the flow's samples instead (a spike of
        :math:`g` the held-out pairs did not hit; ``posterior.fell_back`` flags it). ``min_ess``
        applies to ``"proxy"`` too when given.

        ``"flow"``: sbi's ``DirectPosterior`` on :math:`p_\theta` (samples rejected outside the
        prior's support, leakage-corrected ``log_prob``). ``"proxy"``: :class:`ImportancePosterior`
        on :math:`q_\psi`, importance resampling of ``oversampling`` × n flow samples (its
        ``effective_sample_size`` says how far :math:`q` is from :math:`p`). ``"langevin"``:
        :class:`LangevinPosterior` on :math:`q_\psi` (D.4: 2,000 steps of 1e-4, initialised from
        :math:`p_\theta`). Both proxy posteriors' ``log_prob`` normalize with ``num_zeta_samples``.

        Langevin defaults depend on the proxy. The paper's free EBM: ULA on θ, 2,000 steps of 1e-4
        (D.4). The flow-tilted proxy: MALA in the flow's latent space (``langevin_space="latent"``,
        target :math:`\mathcal N(u)e^{g(T_x(u))}`), step size adapted from 0.1 towards an acceptance
        rate of 0.574 over the first half of the steps. Each can be set explicitly.

        ``device`` puts the posterior's copies of the networks on another device than the one
        trained on (e.g. train on CPU cores, run Langevin chains on a GPU); pass a ``prior``
        that lives on that device too."""
        if self._neural_net is None and density_estimator is None:
            raise RuntimeError("Nothing trained yet: call .train() before .build_posterior().")
        self._posterior = make_posterior(
            density_estimator if density_estimator is not None else self._neural_net,
            self._energy_net,
            prior if prior is not None else self._prior,
            sample_with,
            lambda: self.proxy_gain()["mean"],
            device=str(torch.device(device)) if device is not None else self._device,
            langevin_method=langevin_method,
            num_steps=num_steps,
            step_size=step_size,
            num_zeta_samples=num_zeta_samples,
            oversampling=oversampling,
            langevin_space=langevin_space,
            target_acceptance=target_acceptance,
            min_ess=min_ess,
            **kwargs,
        )
        return self._posterior

    # ------------------------------------------------------------------ persistence
    def save(self, path: str) -> None:
        """Save simulations, split, both networks and the complete training state (atomic write)."""
        write_checkpoint(self, path, finished=True)

    @classmethod
    def load(cls, path: str, prior: Distribution, **init_kwargs) -> "JeffreysNPE":
        """Rebuild a saved ``JeffreysNPE`` (same builders as when saved: a named energy estimator
        is remembered, custom builders must be passed again; defaults unless passed)
        from a file written by :meth:`save`, with ``torch.load(weights_only=True)``."""
        return load_inference(cls, path, prior, **init_kwargs)
