r"""Tests for the density adapter (App. D.1/D.2), the NF baseline and experiments/density2d.py.

Small nets and few iterations, one torch thread: the whole module runs in well under a minute
on 2 CPU cores.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sbi_jeffreys.adapters.density import JeffreysDensityEstimator
from sbi_jeffreys.baselines import NFDensityEstimator
from sbi_jeffreys.datasets import load_toy2d

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(flow_transforms=2, flow_hidden=(32, 32), energy_width=32, energy_blocks=2)


@pytest.fixture(scope="module")
def ring8():
    return load_toy2d("ring8", num_train=256, num_test=1000, seed=0)


@pytest.fixture(scope="module")
def fitted(ring8):
    train, test = ring8
    est = JeffreysDensityEstimator(2, **SMALL, num_zeta_samples=128, warm_start_steps=100, seed=0)
    est.build(train)
    initial = float(-est.log_prob(test).mean())
    est.fit(train, iterations=120, test=test, eval_every=40, show_progress=False)
    return est, initial


def test_jeffreys_learns(fitted, ring8):
    est, initial = fitted
    _, test = ring8
    h = est.history
    assert h["iteration"] == [40, 80, 120]
    for key in ("val_nll_p", "val_nll_q", "val_log_zeta", "lambda_fw", "nll_p"):
        assert len(h[key]) == 3 and all(math.isfinite(v) for v in h[key]), key
    final = float(-est.log_prob(test).mean())
    assert final == pytest.approx(h["val_nll_p"][-1], abs=1e-4)  # the LAST state is kept
    assert final < initial - 1.0, (initial, final)
    # quasi-normalized proxy: finite, with log zeta near 0 (eps_zeta = 0.1 box, loose bound)
    log_q = est.proxy_log_prob(test, num_samples=4096)
    assert log_q.shape == (1000,) and torch.isfinite(log_q).all()
    # early in training the IS estimate is heavy-tailed (rare y with e^f >> p): use a median
    log_zeta = torch.stack([est.log_zeta(4096) for _ in range(5)]).median()
    assert abs(float(log_zeta)) < 1.5
    assert est.timing["seconds"] > est.timing["eval_seconds"] > 0


def test_interfaces(fitted):
    est, _ = fitted
    x = est.sample(50)
    assert x.shape == (50, 2) and torch.isfinite(x).all()
    assert est.log_prob(x).shape == (50,)
    assert est.log_prob(x.double()).dtype == torch.float32
    assert est.proxy_log_prob(x, num_samples=256).shape == (50,)
    assert est.trainer.step_count == 120
    with pytest.raises(RuntimeError, match="not fitted"):
        JeffreysDensityEstimator(2).log_prob(x)


def test_nf_learns(ring8):
    train, test = ring8
    nf = NFDensityEstimator(2, flow_transforms=2, flow_hidden=(32, 32), seed=0, lr=1e-3)
    nf.build(train)
    initial = float(-nf.log_prob(test).mean())
    nf.fit(train, iterations=120, test=test, eval_every=40, show_progress=False)
    h = nf.history
    assert h["iteration"] == [40, 80, 120] and len(h["val_nll_p"]) == 3
    assert h["val_nll_p"][-1] < initial - 1.0
    assert nf.optimizer.defaults["betas"] == (0.0, 0.9)
    assert nf.sample(7).shape == (7, 2) and nf.log_prob(test[:7]).shape == (7,)


def test_minibatches_and_same_seed(ring8):
    train, _ = ring8
    runs = [
        NFDensityEstimator(2, flow_transforms=1, flow_hidden=(8,), seed=3).fit(
            train, iterations=8, batch_size=100, eval_every=6, show_progress=False
        )
        for _ in range(2)
    ]
    assert runs[0].history["iteration"] == [6, 9]  # 3 steps per epoch, rounded up to whole epochs
    assert torch.equal(runs[0].log_prob(train[:5]), runs[1].log_prob(train[:5]))


@pytest.mark.parametrize("kind", ["jeffreys", "nf", "wgan"])
def test_checkpoint_resume_continues_exactly(ring8, tmp_path, kind):
    """A fit cut at half its iterations and resumed from its checkpoint ends where an uncut fit
    ends (model, optimizers, RNG: the NF and WGAN-GP draw random batches)."""
    from sbi_jeffreys.baselines.wgan import WGANGPDensityEstimator

    train, test = ring8[0][:64], ring8[1][:200]
    small = dict(flow_transforms=1, flow_hidden=(16,), seed=1)
    cls, kw = {
        "jeffreys": (JeffreysDensityEstimator, dict(small, energy_width=16, energy_blocks=1, num_zeta_samples=32)),
        "nf": (NFDensityEstimator, small),
        "wgan": (WGANGPDensityEstimator, dict(small, critic_width=8, critic_blocks=1, critic_steps=2)),
    }[kind]
    fit = dict(test=test, eval_every=4, show_progress=False, **({} if kind == "jeffreys" else {"batch_size": 32}))
    full = cls(2, **kw).fit(train, iterations=8, **fit)
    path = tmp_path / "state.pt"
    cls(2, **kw).fit(train, iterations=4, checkpoint_path=path, **fit)
    resumed = cls(2, **kw).fit(train, iterations=8, checkpoint_path=path, resume=True, **fit)
    assert [int(i) for i in resumed.history["iteration"]] == [4, 8]
    assert torch.allclose(resumed.log_prob(test), full.log_prob(test))


def _mark_capturable(tree) -> int:
    """Set ``capturable=True`` in every optimizer state of a checkpoint (as a CUDA-graph run
    writes them); returns how many param groups were marked."""
    if isinstance(tree, dict):
        if "param_groups" in tree:
            for g in tree["param_groups"]:
                g["capturable"] = True
            return len(tree["param_groups"])
        return sum(_mark_capturable(v) for v in tree.values())
    return 0


@pytest.mark.parametrize("kind", ["jeffreys", "nf", "wgan"])
def test_checkpoint_of_a_cuda_graph_run_resumes_on_the_cpu(ring8, tmp_path, kind):
    """A checkpoint whose Adam states say ``capturable=True`` (a CUDA-graph run) resumes
    eagerly on the CPU, as the uncut fit (torch refuses a capturable step on CPU tensors)."""
    from sbi_jeffreys.baselines.wgan import WGANGPDensityEstimator

    train, test = ring8[0][:64], ring8[1][:200]
    small = dict(flow_transforms=1, flow_hidden=(16,), seed=1)
    cls, kw = {
        "jeffreys": (JeffreysDensityEstimator, dict(small, energy_width=16, energy_blocks=1, num_zeta_samples=32)),
        "nf": (NFDensityEstimator, small),
        "wgan": (WGANGPDensityEstimator, dict(small, critic_width=8, critic_blocks=1, critic_steps=2)),
    }[kind]
    fit = dict(test=test, eval_every=4, show_progress=False, **({} if kind == "jeffreys" else {"batch_size": 32}))
    full = cls(2, **kw).fit(train, iterations=8, **fit)
    path = tmp_path / "state.pt"
    cls(2, **kw).fit(train, iterations=4, checkpoint_path=path, **fit)
    state = torch.load(path, weights_only=True)
    assert _mark_capturable(state) >= 1
    torch.save(state, path)
    resumed = cls(2, **kw).fit(train, iterations=8, checkpoint_path=path, resume=True, **fit)
    assert torch.allclose(resumed.log_prob(test), full.log_prob(test))


@pytest.mark.parametrize("cls", [JeffreysDensityEstimator, NFDensityEstimator])
def test_bad_inputs(cls):
    est = cls(2, flow_transforms=1, flow_hidden=(8,), seed=0)
    good = torch.randn(20, 2)
    nan = good.clone()
    nan[3, 1] = float("nan")
    cases = [
        (nan, ValueError, "NaN"),
        (torch.randn(20, 3), ValueError, "features"),
        (torch.randn(20), ValueError, "shape"),
        (torch.empty(0, 2), ValueError, "batch > 0"),
        (torch.ones(20, 2, dtype=torch.long), TypeError, "floating"),
        (good.numpy(), TypeError, "torch.Tensor"),
    ]
    for bad, err, match in cases:
        with pytest.raises(err, match=match):
            est.fit(bad, iterations=2, show_progress=False)
    with pytest.raises(ValueError, match="test"):
        est.fit(good, iterations=2, test=torch.randn(5, 3), show_progress=False)
    with pytest.raises(ValueError, match="iterations"):
        est.fit(good, iterations=0, show_progress=False)
    est.fit(good, iterations=2, show_progress=False)
    with pytest.raises(ValueError, match="NaN"):
        est.log_prob(nan)
    with pytest.raises(ValueError, match="features"):
        est.log_prob(torch.randn(4, 1))


def test_bad_config():
    with pytest.raises(ValueError):
        JeffreysDensityEstimator(2, gradient_estimator="magic")
    with pytest.raises(TypeError):
        JeffreysDensityEstimator(2, no_such_option=1)


def test_density2d_script(tmp_path):
    out = tmp_path / "tmp"
    cmd = [
        sys.executable,
        str(ROOT / "experiments" / "density2d.py"),
        "--quick",
        "--datasets",
        "ring8",
        "--seeds",
        "0",
        "--iterations",
        "50",
        "--eval-every",
        "25",
        "--num-train",
        "128",
        "--num-test",
        "500",
        "--num-zeta-samples",
        "64",
        "--out",
        str(out),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted(r["model"] for r in rows) == ["jeffreys_p", "jeffreys_q", "nf"]
    for r in rows:
        assert r["dataset"] == "ring8" and r["seed"] == "0" and r["iterations"] == "50" and r["status"] == "ok"
        assert math.isfinite(float(r["best_test_nll"])) and float(r["best_test_nll"]) <= float(r["last_test_nll"])
        assert float(r["iters_per_second"]) > 0 and r["device"] == "cpu" and r["resumed"] == "False"
        # a normalized flow holds (nearly) all its mass on the plotted square; q's mass is positive
        mass = float(r["map_mass"])
        assert (0.5 < mass < 1.1) if r["model"] != "jeffreys_q" else mass > 0, (r["model"], mass)
    curves = list(csv.DictReader(open(out / "curves.csv")))
    assert {(c["model"], c["iteration"]) for c in curves} == {
        (m, i) for m in ("jeffreys_p", "jeffreys_q", "nf") for i in ("25", "50")
    }
    for name in ("density_maps.png", "nll_curves.png", "summary.csv", "summary.md"):
        assert (out / name).stat().st_size > 0, name
    # a re-run reuses the finished job instead of training again
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0 and "Reusing 1 finished job" in res.stdout


def test_flow_tilted_density_proxy_starts_at_the_flow_and_learns(ring8):
    train, test = ring8
    est = JeffreysDensityEstimator(2, **SMALL, energy="flow_tilted", seed=0, num_zeta_samples=256)
    est.build(train)
    # g = 0 at the start: q = p exactly, zeta = 1, resampling weights uniform
    assert float(est.log_zeta(2000)) == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(est.proxy_log_prob(test[:50]), est.log_prob(test[:50]), atol=1e-5)
    samples, ess = est.sample_proxy(100)
    assert samples.shape == (100, 2) and ess == pytest.approx(1.0, abs=1e-4)
    est.fit(train, iterations=150, test=test, eval_every=50, show_progress=False)
    hist = est.history
    assert all(math.isfinite(v) for v in hist["val_nll_q"])
    assert est.sample_proxy(200)[1] < 0.9999  # g moved: the weights are no longer uniform


def test_flow_tilted_density_rejects_what_it_does_not_need():
    with pytest.raises(ValueError, match="no temperature or warm start"):
        JeffreysDensityEstimator(2, energy="flow_tilted", temperature=0.01)
    with pytest.raises(ValueError, match="energy must be"):
        JeffreysDensityEstimator(2, energy="free")
    est = JeffreysDensityEstimator(2, energy="flow_tilted", zeta_every=10)
    with pytest.raises(ValueError, match="zeta_every=1"):
        est.build(torch.randn(20, 2))


def test_fit_metrics_hook_joins_the_history(ring8):
    train, _ = ring8
    calls = iter(range(100))
    est = JeffreysDensityEstimator(2, **SMALL, seed=0, num_zeta_samples=64)
    est.fit(train, iterations=20, eval_every=10, show_progress=False, metrics=lambda: {"calls": float(next(calls))})
    assert est.history["calls"] == [0.0, 1.0]


def test_gmm40_report_tables_and_checks_the_fig2_claim(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    fields = ["dataset", "seed", "model", "best_test_nll", "last_test_nll", "iterations", "device", "status"]
    results = [
        ("0", "jeffreys_p", 1.0, 1.2),
        ("1", "jeffreys_p", 1.2, 1.4),
        ("0", "pw_fw1_rv1", 1.5, 1.5),
        ("0", "pw_fw5_rv1", 0.9, 1.6),
        ("0", "nf", 1.3, 1.3),
    ]
    with open(run / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for seed, model, best, last in results:
            w.writerow(dict(dataset="gmm40", seed=seed, model=model, best_test_nll=best, last_test_nll=last,
                            iterations=2, device="cpu", status="ok"))  # fmt: skip
    with open(run / "curves.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["dataset", "seed", "model", "iteration", "test_nll", "log_zeta"])
        w.writeheader()
        for seed, model, best, last in results:
            for it, (nll, z) in enumerate([(last, -0.5), (best, 3.0 if model == "pw_fw5_rv1" else 0.1)]):
                w.writerow(dict(dataset="gmm40", seed=seed, model=model, iteration=it + 1, test_nll=nll,
                                log_zeta="" if model == "nf" else z))  # fmt: skip
    script = ROOT / "experiments" / "gmm40_report.py"
    subprocess.run([sys.executable, str(script), str(run), "--out", str(tmp_path / "out")], check=True)
    with open(tmp_path / "out" / "table.csv") as fh:
        cells = {r["model"]: r for r in csv.DictReader(fh)}
    assert float(cells["jeffreys_p"]["best_mean"]) == pytest.approx(1.1) and cells["jeffreys_p"]["seeds"] == "2"
    assert float(cells["pw_fw5_rv1"]["max_abs_log_zeta"]) == pytest.approx(3.0)
    assert math.isnan(float(cells["nf"]["max_abs_log_zeta"]))
    text = (tmp_path / "out" / "table.md").read_text()
    assert "1 of 2 P-W configurations lower than the dual (pw_fw5_rv1)" in text  # best: 0.9 < 1.1
    assert "0 of 2 P-W configurations lower than the dual" in text  # last: 1.5, 1.6 > 1.3
    assert (tmp_path / "out" / "fig2_pw.png").exists() and (tmp_path / "out" / "fig3.png").exists()
    # without P-W runs (e.g. the dual against WGAN-GP only) there is no Fig. 2 to draw
    (tmp_path / "no_pw").mkdir()
    for name in ("results.csv", "curves.csv"):
        lines = (run / name).read_text().splitlines(keepends=True)
        (tmp_path / "no_pw" / name).write_text("".join(x for x in lines if ",pw_" not in x))
    subprocess.run([sys.executable, str(script), str(tmp_path / "no_pw"), "--out", str(tmp_path / "o2")], check=True)
    assert not (tmp_path / "o2" / "fig2_pw.png").exists() and (tmp_path / "o2" / "fig3.png").exists()


def test_gmm40_report_in_progress_reads_every_kind_of_checkpoint(tmp_path):
    import json

    from sbi_jeffreys.baselines import PenaltyDensityEstimator
    from sbi_jeffreys.baselines.stacked import fit_stacked

    jobs = tmp_path / "run" / "jobs"
    jobs.mkdir(parents=True)
    train, test = load_toy2d("gmm40", num_train=64, num_test=100, seed=0)
    tiny = dict(flow_transforms=1, flow_hidden=(8,), seed=0)
    fit = dict(test=test, eval_every=2, show_progress=False)
    ebm = dict(energy_width=8, energy_blocks=1, num_zeta_samples=16)
    ckpt = jobs / "gmm40_seed0.ckpt"
    dual = JeffreysDensityEstimator(2, **tiny, **ebm)
    dual.fit(train, iterations=6, checkpoint_path=ckpt, **fit)
    NFDensityEstimator(2, **tiny).fit(train, iterations=4, checkpoint_path=f"{ckpt}.nf", **fit)
    pw = [
        PenaltyDensityEstimator(2, w_fw=w, **tiny, energy_width=8, energy_blocks=1, num_zeta_samples=16) for w in (1, 5)
    ]
    fit_stacked(pw, train, iterations=8, checkpoint_path=f"{ckpt}.pw", **fit)
    (jobs / "gmm40_seed0.pw_models.json").write_text(json.dumps(["pw_fw1_rv1", "pw_fw5_rv1"]))

    # a finished run beside them (curves.csv, no checkpoint) is cut at the same iteration
    done = tmp_path / "done"
    done.mkdir()
    with open(done / "curves.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["dataset", "seed", "model", "iteration", "test_nll", "log_zeta"])
        w.writeheader()
        for it, nll in [(2, 3.0), (4, 2.0), (6, -9.0)]:
            w.writerow(dict(dataset="gmm40", seed=0, model="wgan_lr1e-05", iteration=it, test_nll=nll, log_zeta="nan"))
    (done / "results.csv").write_text("dataset,seed,model\n")

    from experiments.gmm40_report import main

    runs = [str(tmp_path / "run"), str(done)]
    summary = {s["model"]: s for s in main([*runs, "--in-progress", "--out", str(tmp_path / "out")])}
    assert set(summary) == {"jeffreys_p", "jeffreys_q", "nf", "pw_fw1_rv1", "pw_fw5_rv1", "wgan_lr1e-05"}
    assert {s["iterations"] for s in summary.values()} == {4}  # cut where the shortest (the NF) stands
    assert summary["wgan_lr1e-05"]["best_mean"] == 2.0 and summary["wgan_lr1e-05"]["last_mean"] == 2.0
    assert summary["jeffreys_p"]["best_mean"] == pytest.approx(min(dual.history["val_nll_p"][:2]))
    assert summary["pw_fw5_rv1"]["best_mean"] == pytest.approx(min(pw[1].history["val_nll_p"][:2]))
    assert (tmp_path / "out" / "table.md").read_text().startswith("In progress: every curve cut at iteration 4.")


def test_config_passed_whole_equals_its_fields_and_rejects_mixing(ring8):
    from sbi_jeffreys.engine import JeffreysConfig

    train = ring8[0][:64]
    config = JeffreysConfig(num_zeta_samples=32, energy_lr=3e-4, eps_zeta=0.2)
    runs = [
        JeffreysDensityEstimator(2, **SMALL, seed=0, **kw).fit(train, iterations=4, show_progress=False)
        for kw in (dict(config=config), dict(num_zeta_samples=32, energy_lr=3e-4, eps_zeta=0.2))
    ]
    assert runs[0].config == runs[1].config and runs[0].config is not config
    assert torch.equal(runs[0].log_prob(train[:5]), runs[1].log_prob(train[:5]))
    with pytest.raises(ValueError, match="not both"):
        JeffreysDensityEstimator(2, config=config, eps_zeta=0.3)
    with pytest.raises(TypeError, match="JeffreysConfig"):
        JeffreysDensityEstimator(2, config={"eps_zeta": 0.3})


def test_nll_vs_m_reads_m_from_each_run(tmp_path):
    from experiments.nll_vs_m import main

    script = ROOT / "experiments" / "density2d.py"
    common = ["--quick", "--datasets", "ring8", "--seeds", "0", "--iterations", "6", "--eval-every", "3"]
    for m in (8, 32):
        args = [*common, "--num-test", "100", "--models", "jeffreys", "--num-zeta-samples", str(m)]
        subprocess.run([sys.executable, str(script), *args, "--out", str(tmp_path / f"M{m}")], check=True)
    rows = main([str(tmp_path / "M8"), str(tmp_path / "M32"), "--out", str(tmp_path / "out")])
    assert [(r["num_zeta_samples"], r["model"]) for r in rows] == [
        (8, "jeffreys_p"), (8, "jeffreys_q"), (32, "jeffreys_p"), (32, "jeffreys_q")
    ]  # fmt: skip
    assert all(math.isfinite(r["best_mean"]) and r["seeds"] == 1 for r in rows)
    assert (tmp_path / "out" / "fig8b.png").exists()


def test_density2d_cut_job_keeps_its_finished_nf_and_resumes_the_dual(tmp_path, monkeypatch):
    from experiments import density2d

    args = density2d.parse_args(["--quick", "--datasets", "ring8", "--seeds", "0", "--iterations", "6"])
    settings = density2d.job_settings(args, "ring8", "cpu")
    settings.update(num_test=100, eval_every=3)

    def killed(self, *a, **k):
        raise KeyboardInterrupt  # the job is cut while the dual trains

    monkeypatch.setattr(density2d.JeffreysDensityEstimator, "fit", killed)
    with pytest.raises(KeyboardInterrupt):
        density2d.run_job("ring8", 0, settings, str(tmp_path))
    assert (tmp_path / "ring8_seed0.partial.json").exists()
    monkeypatch.undo()

    def retrained(self, *a, **k):
        raise AssertionError("the finished NF was trained again")

    monkeypatch.setattr(density2d.NFDensityEstimator, "fit", retrained)
    out = density2d.run_job("ring8", 0, settings, str(tmp_path))
    assert [r["model"] for r in out["rows"]] == ["nf", "jeffreys_p", "jeffreys_q"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ring8_seed0.json"]  # checkpoints and partial removed
