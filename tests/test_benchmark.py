"""Tests for the method registry and the sbibm benchmark (tasks, C2ST, adapter, sweeps).

Trainings use sbi's NPE (and, once it exists, JeffreysNPE) with a few hundred simulations
and two epochs so that each test takes seconds on two CPU cores.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import MappingProxyType

import pytest
import torch

from sbi_jeffreys.benchmark import (
    TASKS,
    ResultStore,
    c2st_paper,
    c2st_sbibm,
    get_task,
    prior_box,
    prior_on_device,
    run_method,
    run_sweep,
)
from sbi_jeffreys.benchmark.sweep import KEY_COLUMNS
from sbi_jeffreys.registry import available_methods, get_method

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "sbi_sweep.py"
TINY_TRAIN = {"max_num_epochs": 2}
HAS_JEFFREYS = importlib.util.find_spec("sbi_jeffreys.adapters.sbi") is not None
needs_jeffreys = pytest.mark.skipif(
    not HAS_JEFFREYS, reason="sbi_jeffreys.adapters.sbi (JeffreysNPE) is not importable"
)


def _tiny_train(method: str) -> dict:
    """Two epochs; for JeffreysNPE also a short warm start of the energy model (B.8)."""
    return dict(TINY_TRAIN, **({"warm_start_steps": 2} if method.startswith("jeffreys") else {}))


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _keys(rows) -> list[tuple]:
    return [tuple(r[c] for c in KEY_COLUMNS) for r in rows]


# --------------------------------------------------------------------------- registry


def test_registry_resolves_npe_and_jeffreys_lazily():
    assert {"npe", "jeffreys_npe", "jeffreys_npe_langevin"} <= set(available_methods())
    from sbi.inference import NPE

    assert get_method("npe").load() is NPE
    assert get_method("jeffreys_npe").posterior_kwargs["sample_with"] == "auto"
    assert get_method("jeffreys_npe_proxy").posterior_kwargs["sample_with"] == "proxy"
    assert get_method("jeffreys_npe_flow").posterior_kwargs["sample_with"] == "flow"
    assert get_method("jeffreys_npe_langevin").posterior_kwargs["sample_with"] == "langevin"
    assert get_method("jeffreys_npe").training_key == get_method("jeffreys_npe_flow").training_key
    assert get_method("jeffreys_npe_proxy").training_key == get_method("jeffreys_npe_flow").training_key
    # the paper's free EBM is a different training
    assert get_method("jeffreys_npe_free").training_key == get_method("jeffreys_npe_langevin").training_key
    assert get_method("jeffreys_npe").training_key != get_method("jeffreys_npe_free").training_key
    assert get_method("npe").training_key != get_method("npe_nsf").training_key
    # Importing the registry imports neither sbi nor the JeffreysNPE adapter beyond what
    # the package itself imports.
    code = (
        "import sys, sbi_jeffreys; before = set(sys.modules); import sbi_jeffreys.registry; "
        "new = set(sys.modules) - before; "
        "bad = sorted(m for m in new if m == 'sbi' or m.startswith(('sbi.', 'sbi_jeffreys.adapters'))); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@needs_jeffreys
def test_registry_loads_jeffreys_npe():
    from sbi_jeffreys.adapters.sbi import JeffreysNPE

    assert get_method("jeffreys_npe").load() is JeffreysNPE


def test_unknown_names_list_the_valid_ones(tmp_path, capsys):
    with pytest.raises(ValueError, match="Unknown method 'nope'.*npe, .*jeffreys_npe"):
        get_method("nope")
    with pytest.raises(ValueError, match="Unknown task 'nope'.*two_moons, gaussian_mixture"):
        get_task("nope")
    with pytest.raises(ValueError, match="valid tasks are: two_moons"):
        run_sweep(["two_moons", "nope"], [100], [0], [1], ["npe"], tmp_path)
    with pytest.raises(ValueError, match="valid methods are: npe"):
        run_sweep(["two_moons"], [100], [0], [1], ["npe", "nope"], tmp_path)
    with pytest.raises(ValueError, match="valid methods are: npe"):
        run_method("two_moons", 10, 100, num_observation=1, method="nope")
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import sbi_sweep
    finally:
        sys.path.remove(str(SCRIPT.parent))
    for option in ("--tasks", "--methods"):
        with pytest.raises(SystemExit):
            sbi_sweep.main([option, "nope"])
        err = capsys.readouterr().err
        assert "invalid choice: 'nope'" in err and ("two_moons" in err or "jeffreys_npe" in err)


# --------------------------------------------------------------------------- tasks


@pytest.mark.parametrize("name", TASKS)
def test_task_imports_simulates_and_loads_reference(name):
    task = get_task(name)
    theta = task.get_prior()(num_samples=4)
    x = task.get_simulator()(theta)
    assert theta.shape == (4, task.dim_parameters) and x.shape == (4, task.dim_data)
    reference = task.get_reference_posterior_samples(num_observation=1)
    assert reference.shape == (10_000, task.dim_parameters)
    assert task.get_observation(num_observation=10).shape == (1, task.dim_data)
    prior = prior_on_device(task, "cpu")
    torch.testing.assert_close(prior.log_prob(theta), task.get_prior_dist().log_prob(theta))
    box = prior_box(task)
    if name in ("gaussian_linear", "bernoulli_glm"):
        assert box is None
    else:
        low, high = box
        assert low.shape == high.shape == (task.dim_parameters,) and (low < high).all()
        assert ((theta >= low) & (theta <= high)).all()


# --------------------------------------------------------------------------- c2st


def test_c2st_same_distribution_near_half_separated_near_one():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(400, 2, generator=g)
    Y = torch.randn(400, 2, generator=g)
    assert abs(c2st_sbibm(X, Y) - 0.5) < 0.1
    assert c2st_sbibm(X, Y + 8.0) > 0.95
    X = torch.randn(2000, 3, generator=g)
    Y = torch.randn(2000, 3, generator=g)
    assert abs(c2st_paper(X, Y, seed=0) - 0.5) < 0.06
    assert c2st_paper(X, Y + 8.0, seed=0) > 0.99
    with pytest.raises(ValueError, match="differ in dimension"):
        c2st_paper(X, Y[:, :2], seed=0)


def test_batched_torch_c2st_agrees_with_sbibm():
    """sbibm's classifier trained in torch, several tests as one batched model: each score within
    the classifier's own seed spread of sbibm's (a mid-range case), and in the right order."""
    from sbi_jeffreys.benchmark.c2st_torch import c2st_batched

    g = torch.Generator().manual_seed(1)
    X = torch.randn(1000, 2, generator=g)
    pairs = [(X, torch.randn(1000, 2, generator=g) + shift * torch.tensor([1.0, 0.0])) for shift in (0.0, 1.0, 6.0)]
    ours = c2st_batched(pairs)
    assert abs(ours[0] - 0.5) < 0.05 and ours[2] > 0.99
    reference = c2st_sbibm(*pairs[1])  # about 0.69
    assert 0.6 < reference < 0.8 and abs(ours[1] - reference) < 0.03, (ours, reference)
    with pytest.raises(ValueError, match="one shape"):
        c2st_batched([(X, X), (X[:500], X[:500])])
    with pytest.raises(ValueError, match="NaN or inf"):
        c2st_batched([(X, X * float("nan"))])


# --------------------------------------------------------------------------- adapter


@pytest.mark.parametrize(
    "method",
    [pytest.param(m, marks=needs_jeffreys) if m.startswith("jeffreys") else m for m in available_methods()],
)
def test_adapter_returns_sbibm_shapes(method):
    spec = get_method(method)
    if spec.posterior_kwargs.get("sample_with") == "langevin":  # shapes, not mixing: 50 steps, not 2,000
        spec = dataclasses.replace(spec, posterior_kwargs=MappingProxyType({**spec.posterior_kwargs, "num_steps": 50}))
    samples, used, log_prob_true = run_method(
        "two_moons",
        50,
        200,
        num_observation=3,
        method=spec,
        seed=1,
        train_kwargs=_tiny_train(method),
    )
    assert samples.shape == (50, 2) and samples.device.type == "cpu"
    assert samples.dtype == torch.float32 and torch.isfinite(samples).all()
    assert used == 200 and log_prob_true is None


def test_adapter_accepts_an_observation_tensor():
    task = get_task("gaussian_linear")
    samples, used, _ = run_method(task, 30, 200, observation=task.get_observation(2), seed=1, train_kwargs=TINY_TRAIN)
    assert samples.shape == (30, 10) and used == 200


def test_adapter_same_seed_same_numbers():
    def run():
        return run_method("slcp", 20, 200, num_observation=1, seed=3, train_kwargs=TINY_TRAIN)[0]

    torch.testing.assert_close(run(), run(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="exactly one"):
        run_method("slcp", 20, 200, seed=3)


# --------------------------------------------------------------------------- store & sweeps


def test_store_never_duplicates_rows(tmp_path):
    store = ResultStore(tmp_path / "results.csv")
    row = dict(task="two_moons", num_simulations=100, seed=0, observation=1, method="npe", c2st=0.7)
    assert store.append([row, dict(row, observation=2)]) == 2
    assert store.append([dict(row, c2st=0.9), dict(row, observation=3)]) == 1
    rows = store.read()
    assert len(rows) == 3 and len(set(_keys(rows))) == 3
    assert rows[0]["c2st"] == "0.7"  # the first stored value wins
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_tiny_sweep_scores_with_the_batched_c2st(tmp_path):
    report = run_sweep(
        ["two_moons"],
        [200],
        [0],
        [1, 2],
        ["npe"],
        tmp_path,
        num_samples=200,
        c2st="torch",
        train_kwargs=TINY_TRAIN,
        progress=False,
        summarize=False,
    )
    assert report.failures == [] and report.rows_written == 2
    rows = _rows(tmp_path / "results.csv")
    assert all(r["c2st_kind"] == "torch" and 0.4 <= float(r["c2st"]) <= 1.0 for r in rows)


def test_tiny_sweep_writes_results_summary_and_figure(tmp_path):
    report = run_sweep(
        ["two_moons", "gaussian_mixture"],
        [200],
        [0],
        [1],
        ["npe"],
        tmp_path,
        num_samples=200,
        c2st="paper",
        train_kwargs=TINY_TRAIN,
        n_jobs=2,
        progress=False,
    )
    assert report.failures == [] and report.units_run == 2 and report.rows_written == 2
    rows = _rows(tmp_path / "results.csv")
    assert sorted(r["task"] for r in rows) == ["gaussian_mixture", "two_moons"]
    for r in rows:
        assert 0.0 <= float(r["c2st"]) <= 1.0 and r["c2st_kind"] == "paper"
        assert float(r["train_seconds"]) > 0 and float(r["sample_seconds"]) > 0
        assert r["device"] == "cpu" and r["num_simulations"] == "200"
    summary = _rows(tmp_path / "summary.csv")
    assert {(r["task"], r["num_simulations"], r["method"]) for r in summary} == {
        ("two_moons", "200", "npe"),
        ("gaussian_mixture", "200", "npe"),
    }
    assert (tmp_path / "c2st_vs_budget.png").stat().st_size > 10_000
    # a rerun skips everything; other settings in the same folder are refused
    again = run_sweep(
        ["two_moons", "gaussian_mixture"],
        [200],
        [0],
        [1],
        ["npe"],
        tmp_path,
        num_samples=200,
        c2st="paper",
        train_kwargs=TINY_TRAIN,
        progress=False,
    )
    assert again.units_run == 0 and again.units_skipped == 2
    with pytest.raises(ValueError, match="other settings"):
        run_sweep(
            ["two_moons"],
            [200],
            [0],
            [1],
            ["npe"],
            tmp_path,
            num_samples=200,
            c2st="sbibm",
            train_kwargs=TINY_TRAIN,
            progress=False,
        )


def test_figure_gives_each_method_one_colour_in_every_panel():
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from sbi_jeffreys.benchmark.summary import c2st_figure

    # slcp has no JeffreysNPE cell at 10^3: its NPE line must still wear NPE's colour
    summary = pd.DataFrame(
        [
            dict(task="two_moons", num_simulations=n, method=m, c2st_mean=0.7, c2st_sd=0.01)
            for n in (1000, 10000)
            for m in ("jeffreys_npe", "npe")
        ]
        + [
            dict(task="slcp", num_simulations=1000, method="npe", c2st_mean=0.9, c2st_sd=0.01),
            dict(task="slcp", num_simulations=10000, method="jeffreys_npe", c2st_mean=0.8, c2st_sd=0.01),
        ]
    )
    fig = c2st_figure(summary)
    colours: dict[str, set] = {}
    for ax in fig.axes:
        for container in ax.containers:
            colours.setdefault(container.get_label(), set()).add(container.lines[0].get_color())
    assert set(colours) == {"jeffreys_npe", "npe"}
    assert all(len(c) == 1 for c in colours.values())
    assert colours["npe"] != colours["jeffreys_npe"]


class _EchoPosterior:
    """``sample_batched`` returns, for condition b, samples equal to ``x[b]``."""

    _device = "cpu"

    def sample_batched(self, sample_shape, x, max_sampling_batch_size=10_000):
        self.max_sampling_batch_size = max_sampling_batch_size
        return x.expand(*sample_shape, *x.shape).clone()


def test_batched_sampling_keeps_each_observation_with_its_samples():
    from sbi_jeffreys.benchmark.algorithm import sample_posterior_batched

    posterior, xs = _EchoPosterior(), torch.arange(6.0).reshape(3, 2)
    samples, seconds = sample_posterior_batched(posterior, xs, 4)
    assert len(samples) == 3 and seconds >= 0
    for b in range(3):
        assert samples[b].shape == (4, 2) and (samples[b] == xs[b]).all()
    assert posterior.max_sampling_batch_size == 12  # every chain in one batch


@needs_jeffreys
def test_jeffreys_sweep_shares_training_batches_langevin_and_scores_in_parallel(tmp_path):
    report = run_sweep(
        ["two_moons"],
        [200],
        [0],
        [1, 2],
        ["jeffreys_npe", "jeffreys_npe_mala"],
        tmp_path,
        num_samples=100,
        c2st="paper",
        train_kwargs=_tiny_train("jeffreys"),
        progress=False,
        sample_devices=["cpu"],
        c2st_jobs=2,
    )
    assert report.failures == [] and report.units_run == 1 and report.rows_written == 4
    rows = _rows(tmp_path / "results.csv")
    assert sorted((r["method"], r["observation"]) for r in rows) == [
        ("jeffreys_npe", "1"),
        ("jeffreys_npe", "2"),
        ("jeffreys_npe_mala", "1"),
        ("jeffreys_npe_mala", "2"),
    ]
    assert len({r["train_seconds"] for r in rows}) <= 2  # one training (plus each build)
    assert all(0.0 <= float(r["c2st"]) <= 1.0 and r["device"] == "cpu" for r in rows)
    langevin = [float(r["sample_seconds"]) for r in rows if r["method"] == "jeffreys_npe_mala"]
    assert langevin[0] == langevin[1] > 0  # one batch for both observations, time shared out
    # the proxy's held-out gain over its flow: one value per training, on every row of it
    assert len({r["proxy_gain"] for r in rows}) == 1 and math.isfinite(float(rows[0]["proxy_gain"]))
    assert rows[0]["proxy_gain_nonfinite"] == "0"


@needs_jeffreys
def test_unit_checkpoint_is_shared_resumed_and_removed_after_its_rows(tmp_path):
    from sbi_jeffreys.benchmark.sweep import plan_units, run_unit

    units, _ = plan_units(
        ["two_moons"],
        [200],
        [0],
        [1],
        ["jeffreys_npe_proxy", "jeffreys_npe_flow", "npe"],
        num_samples=50,
        c2st="paper",
        train_kwargs=_tiny_train("jeffreys"),
        checkpoint_dir=str(tmp_path / "ck"),
    )
    jeffreys = [u for u in units if "jeffreys_npe_flow" in u.methods]
    assert len(jeffreys) == 1 and jeffreys[0].checkpoint_path == str(
        tmp_path / "ck" / "two_moons_n200_seed0_jeffreys_npe_proxy.pt"
    )
    unit = jeffreys[0]
    first = run_unit(unit)
    assert not first.errors and os.path.exists(unit.checkpoint_path)  # the parent deletes it
    again = run_unit(unit)  # from the finished checkpoint: no training, the same posteriors
    assert [r["c2st"] for r in again.rows] == [r["c2st"] for r in first.rows]
    assert again.rows[0]["train_seconds"] < first.rows[0]["train_seconds"]
    npe = [u for u in units if u.methods == ("npe",)][0]
    assert not run_unit(npe).errors  # NPE's train() gets no checkpoint_path

    report = run_sweep(
        ["two_moons"],
        [200],
        [0],
        [1],
        ["jeffreys_npe_flow"],
        tmp_path / "sweep",
        num_samples=50,
        c2st="paper",
        train_kwargs=_tiny_train("jeffreys"),
        progress=False,
    )
    assert report.failures == [] and report.rows_written == 1
    assert list((tmp_path / "sweep" / "checkpoints").iterdir()) == []  # removed once the rows were written


def test_failed_training_is_reported_and_writes_no_row(tmp_path):
    report = run_sweep(
        ["two_moons"],
        [200],
        [0],
        [1],
        ["npe"],
        tmp_path,
        num_samples=50,
        train_kwargs={"not_an_option": 1},
        progress=False,
    )
    assert len(report.failures) == 1 and "not_an_option" in report.failures[0][2]
    assert not (tmp_path / "results.csv").exists()


def test_dask_backend_on_local_cluster(tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        report = run_sweep(
            ["two_moons"],
            [200],
            [0, 1],
            [1, 2],
            ["npe"],
            tmp_path,
            num_samples=100,
            c2st="paper",
            train_kwargs=TINY_TRAIN,
            backend="dask",
            scheduler=cluster.scheduler_address,
            progress=False,
        )
    assert report.failures == [] and report.units_run == 2
    rows = _rows(tmp_path / "results.csv")
    assert sorted(_keys(rows)) == sorted(("two_moons", "200", str(s), str(o), "npe") for s in (0, 1) for o in (1, 2))
    assert (tmp_path / "summary.csv").exists() and (tmp_path / "c2st_vs_budget.png").exists()


def test_sweep_killed_with_sigkill_resumes_without_duplicates(tmp_path):
    budgets = [str(b) for b in range(200, 1000, 100)]  # 8 trainings
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--tasks",
        "two_moons",
        "--budgets",
        *budgets,
        "--seeds",
        "0",
        "--observations",
        "1",
        "--methods",
        "npe",
        "--num-samples",
        "100",
        "--c2st",
        "paper",
        "--max-epochs",
        "2",
        "--no-progress",
        "--out",
        str(tmp_path),
    ]
    results = tmp_path / "results.csv"
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (results.exists() and _rows(results)):
            assert proc.poll() is None, "the sweep ended before writing a row"
            assert time.monotonic() < deadline, "no row after 120 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    first = _rows(results)
    assert 1 <= len(first) < len(budgets), "the sweep was not interrupted half-way"
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{len(budgets) - len(first)} trainings run, {len(first)} already done" in done.stdout
    rows = _rows(results)
    assert len(rows) == len(budgets) and len(set(_keys(rows))) == len(rows)
    assert sorted(r["num_simulations"] for r in rows) == sorted(budgets)
    assert rows[: len(first)] == first  # finished cells were kept, not redone


def _write_results(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True)
    with open(folder / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_merge_sweeps_tables_and_refuses_duplicates(tmp_path):
    def row(method, seed, obs, c2st):
        return dict(
            task="two_moons",
            num_simulations=1000,
            seed=seed,
            observation=obs,
            method=method,
            c2st=c2st,
            train_seconds=1.0,
            sample_seconds=0.1,
        )

    # JeffreysNPE lower in 3 of 4 (seed, observation) cells and in seed 0 only on average
    _write_results(tmp_path / "npe", [row("npe", s, o, 0.8) for s in (0, 1) for o in (1, 2)])
    _write_results(
        tmp_path / "jeffreys",
        [
            row("jeffreys_npe", 0, 1, 0.6),
            row("jeffreys_npe", 0, 2, 0.7),
            row("jeffreys_npe", 1, 1, 0.7),
            row("jeffreys_npe", 1, 2, 0.95),
        ],
    )
    script = Path(__file__).resolve().parents[1] / "experiments" / "merge_sweeps.py"
    run = [sys.executable, str(script), "--out", str(tmp_path / "merged")]
    res = subprocess.run(run + [str(tmp_path / "npe"), str(tmp_path / "jeffreys")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    table = (tmp_path / "merged" / "table.md").read_text()
    assert "| two_moons | 1,000 | 0.800 ± 0.000 (seeds 0,1) | 0.737 ± 0.149 (seeds 0,1) |" in table
    assert "| two_moons | 1,000 | jeffreys_npe | 0.650 | 0.825 |" in table
    assert "| two_moons | 1,000 | 3 of 4 | 1 of 2 |" in table
    assert (tmp_path / "merged" / "c2st_vs_budget.png").exists()
    res = subprocess.run(run + [str(tmp_path / "npe"), str(tmp_path / "npe")], capture_output=True, text=True)
    assert res.returncode != 0 and "duplicated cells" in res.stderr


def test_select_by_gain_copies_the_posterior_that_auto_picks_per_training():
    import pandas as pd

    spec = importlib.util.spec_from_file_location(
        "paired_report", Path(__file__).resolve().parents[1] / "experiments" / "paired_report.py"
    )
    assert spec is not None and spec.loader is not None
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    rows = []
    for seed, gain in ((0, 0.05), (1, -0.2)):  # seed 0: the proxy fits better held out, seed 1: worse
        for obs in (1, 2):
            base = dict(task="t", num_simulations=100, seed=seed, observation=obs)
            ess = 0.001 if (seed, obs) == (0, 2) else 0.9  # seed 0, observation 2: degenerate weights
            rows.append({**base, "method": "proxy", "c2st": 0.6 + obs / 100, "proxy_gain": gain, "ess": ess})
            rows.append({**base, "method": "flow", "c2st": 0.7 + obs / 100, "proxy_gain": gain})
    rows.append(dict(task="t", num_simulations=100, seed=2, observation=1, method="proxy", c2st=0.9))  # no gain
    for method, c2st in (("proxy", 0.5), ("flow", 0.8)):  # seed 3: a gain measured, not finite
        rows.append(
            dict(
                task="t",
                num_simulations=100,
                seed=3,
                observation=1,
                method=method,
                c2st=c2st,
                proxy_gain=float("nan"),
                proxy_gain_nonfinite=3,
            )
        )
    picked = report.select_by_gain(pd.DataFrame(rows), "proxy", "flow", "auto").sort_values(["seed", "observation"])
    assert list(picked.method.unique()) == ["auto"] and list(picked.seed) == [0, 0, 1, 1, 3]
    assert list(picked.selected) == ["proxy", "flow (ess)", "flow", "flow", "flow (gain not finite)"]
    assert list(picked.c2st) == pytest.approx([0.61, 0.72, 0.71, 0.72, 0.8])


def test_c2st_compaction_continues_the_active_classifiers_exactly():
    """Dropping stopped problems from the batch keeps each active one's Adam trajectory."""
    from sbi_jeffreys.benchmark.c2st_torch import _compact

    torch.manual_seed(0)
    w = torch.randn(3, 4, 2, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.1)
    target = torch.randn(3, 4, 2)

    def step(params, optimizer, rows):
        optimizer.zero_grad()
        (params[0] - target[rows]).pow(2).sum().backward()
        optimizer.step()

    for _ in range(3):
        step([w], opt, torch.arange(3))
    reference_w = w.detach().clone().requires_grad_()
    reference = torch.optim.Adam([reference_w], lr=0.1)
    reference.state[reference_w] = {k: v.clone() for k, v in opt.state[w].items()}
    final = [torch.zeros(3, 4, 2)]
    (kept,), kept_opt = _compact([w], opt, final, torch.arange(3), keep=torch.tensor([0, 2]))
    torch.testing.assert_close(final[0][1], reference_w.detach()[1])  # the stopped one is stored
    for _ in range(2):
        step([kept], kept_opt, torch.tensor([0, 2]))
        step([reference_w], reference, torch.arange(3))
    torch.testing.assert_close(kept.detach(), reference_w.detach()[[0, 2]])
