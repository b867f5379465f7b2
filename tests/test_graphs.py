"""CUDA-graph replay of training steps: the same training as eager steps (CUDA only).

Graph-safe RNG gives a replayed step the same random numbers as the eager step it recorded,
so with one seed both runs must agree up to floating-point reduction order.
"""

import pytest
import torch

from sbi_jeffreys.adapters.density import JeffreysDensityEstimator
from sbi_jeffreys.baselines.nf import NFDensityEstimator
from sbi_jeffreys.datasets import load_toy2d

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
SMALL = dict(flow_transforms=2, flow_hidden=(16, 16), energy_width=16, energy_blocks=2, num_zeta_samples=64)


def _params(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def _jeffreys(graph: bool, steps: int, **kw):
    train, _ = load_toy2d("ring8", 256, 1, 0)
    est = JeffreysDensityEstimator(2, device="cuda", seed=0, cuda_graph=graph, **SMALL, **kw)
    trainer = est.build(train)
    x = train.cuda()
    torch.manual_seed(1)
    for _ in range(steps):
        trainer.train_step(x)
    return est, trainer


@cuda
@pytest.mark.parametrize("estimator,zeta_every", [("reparameterized", 1), ("score", 1), ("reparameterized", 4)])
def test_replayed_jeffreys_steps_match_eager(estimator, zeta_every):
    # zeta_every > 1 (D.3): the proposals are redrawn outside the recording, into its buffers
    kw = dict(gradient_estimator=estimator, zeta_every=zeta_every)
    eager, t_eager = _jeffreys(False, 12, **kw)
    graph, t_graph = _jeffreys(True, 12, **kw)
    assert t_graph._graph.recorded and t_graph.step_count == t_eager.step_count == 12
    for a, b in ((eager.flow, graph.flow), (eager.energy, graph.energy)):
        torch.testing.assert_close(_params(a), _params(b), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(t_eager.dual.lam, t_graph.dual.lam, rtol=1e-4, atol=1e-6)
    s_eager, s_graph = t_eager.read_statistics(12), t_graph.read_statistics(12)
    assert s_eager.keys() == s_graph.keys()
    for k in s_eager:
        assert s_graph[k] == pytest.approx(s_eager[k], rel=1e-3, abs=1e-5), k


@cuda
def test_replayed_fit_learns_and_rolls_back_cleanly():
    train, test = load_toy2d("ring8", 512, 2000, 0)
    est = JeffreysDensityEstimator(2, device="cuda", seed=0, cuda_graph=True, **SMALL)
    est.fit(train, iterations=300, test=test, eval_every=50, show_progress=False)
    nll = est.history["val_nll_p"]
    assert nll[-1] < nll[0] - 1.0
    # a rollback replaces the optimizers' state tensors: the step must be recorded again
    trainer = est.trainer
    trainer._restore(trainer._snapshot())
    assert not trainer._graph.recorded
    before = _params(est.flow).clone()
    for _ in range(6):
        trainer.train_step(train.cuda())
    assert trainer._graph.recorded and not torch.equal(before, _params(est.flow))


@cuda
def test_replayed_nf_matches_eager():
    train, _ = load_toy2d("moons", 256, 1, 0)
    out = []
    for graph in (False, True):
        nf = NFDensityEstimator(2, flow_transforms=2, flow_hidden=(16, 16), device="cuda", seed=0, cuda_graph=graph)
        nf.build(train)
        for _ in range(10):
            nf.train_step(train.cuda())
        out.append((_params(nf.flow), float(nf._total)))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-4, atol=1e-5)
    assert out[1][1] == pytest.approx(out[0][1], rel=1e-4)


def _jeffreys_npe(graph: bool, flow="zuko_nsf"):
    from sbi.utils import BoxUniform

    from sbi_jeffreys.adapters.sbi import JeffreysNPE
    from sbi_jeffreys.benchmark.algorithm import _NullTracker
    from sbi_jeffreys.nets.flows import zuko_coupling_nsf

    flow = zuko_coupling_nsf(hidden_features=(16, 16), num_transforms=2) if flow == "coupling" else flow

    torch.manual_seed(0)
    prior = BoxUniform(-torch.ones(2), torch.ones(2), device="cuda")
    theta = prior.sample((330,))
    x = torch.cat([theta, theta.sum(-1, keepdim=True)], -1) + 0.1 * torch.randn(330, 3, device="cuda")
    torch.manual_seed(1)
    inference = JeffreysNPE(
        prior, density_estimator=flow, device="cuda", show_progress_bars=False, tracker=_NullTracker()
    )
    # 297 training pairs in batches of 50: five full batches and, as sbi drops it unless told
    # otherwise, a ragged one of 47 per epoch
    inference.append_simulations(theta, x).train(
        training_batch_size=50,
        max_num_epochs=5,
        stop_after_epochs=100,
        num_zeta_samples=8,
        warm_start_steps=5,
        cuda_graph=graph,
        dataloader_kwargs={"drop_last": False},
    )
    return inference


@cuda
@pytest.mark.parametrize("flow", ["zuko_nsf", "coupling"])
def test_replayed_jeffreys_npe_matches_eager_with_ragged_batches(flow):
    eager, graph = _jeffreys_npe(False, flow), _jeffreys_npe(True, flow)
    assert graph._trainer._graph.num_recordings == 2 and eager._trainer._graph is None
    for a, b in ((eager._neural_net, graph._neural_net), (eager._energy_net, graph._energy_net)):
        diff = (_params(a) - _params(b)).abs()
        # float rounding of near-zero gradients moves Adam by up to an LR step per step on a few
        # parameters (measured: max 1.2e-3, mean 8e-8); a wrong replay would move most of them
        assert diff.mean() < 1e-5 and diff.max() < 1e-2
    torch.testing.assert_close(eager._trainer.dual.lam, graph._trainer.dual.lam, rtol=1e-4, atol=1e-6)
    assert graph.summary["validation_loss"] == pytest.approx(eager.summary["validation_loss"], rel=1e-4, abs=1e-5)


@cuda
def test_jeffreys_npe_refuses_to_record_an_nflows_step():
    with pytest.raises(ValueError, match="zuko_coupling_nsf"):
        _jeffreys_npe(True, "nsf")


@cuda
def test_replayed_wgan_iterations_match_eager():
    from sbi_jeffreys.baselines.wgan import WGANGPDensityEstimator

    train, _ = load_toy2d("gmm40", num_train=200, num_test=10, seed=0)
    x = train.cuda()
    kw = dict(flow_transforms=2, flow_hidden=(16, 16), critic_width=16, critic_blocks=2, critic_steps=2, seed=0)
    runs = []
    for graph in (False, True):
        est = WGANGPDensityEstimator(2, device="cuda", cuda_graph=graph, **kw)
        est.build(x)
        losses = []
        for s in range(7):  # three eager warm-up iterations, the recording, three replays
            torch.manual_seed(s)
            losses.append(est.step(x, batch_size=100))
        runs.append((est, torch.stack(losses)))
    (eager, a), (graphed, b) = runs
    assert graphed._graphs[100].recorded
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    diff = torch.cat([(p - q).abs().flatten() for p, q in zip(eager.flow.parameters(), graphed.flow.parameters())])
    assert diff.mean() < 1e-5 and diff.max() < 1e-2  # Adam rounding, as above
