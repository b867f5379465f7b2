"""experiments/ablation_report.py: the derived ``auto`` posterior and the paired counts."""

from __future__ import annotations

import pandas as pd


def _rows() -> pd.DataFrame:
    rows = []
    for seed, gain, ess in ((0, 0.1, 0.9), (1, -0.1, 0.9), (2, 0.1, 0.01)):
        for obs in (1, 2):
            base = dict(task="t", budget=1000, seed=seed, observation=obs, train_seconds=10.0, proxy_gain=gain)
            rows.append({**base, "variant": "npe_nsf", "posterior": "flow", "c2st": 0.7, "proxy_gain": None})
            rows.append({**base, "variant": "v", "posterior": "flow", "c2st": 0.6, "ess": None})
            rows.append({**base, "variant": "v", "posterior": "proxy", "c2st": 0.55, "ess": ess})
    return pd.DataFrame(rows)


def test_auto_takes_the_proxy_only_where_the_gain_is_positive_and_the_ess_enough():
    from experiments.ablation_report import with_auto

    auto = with_auto(_rows()).query("posterior == 'auto'").set_index("seed")
    assert auto.loc[0, "c2st"].tolist() == [0.55, 0.55]  # gain > 0, ESS 0.9: the proxy
    assert auto.loc[1, "c2st"].tolist() == [0.6, 0.6]  # gain < 0: the flow
    assert auto.loc[2, "c2st"].tolist() == [0.6, 0.6]  # ESS below 1/16: the flow
    assert set(auto.selected) == {"proxy", "flow"}


def test_table_counts_paired_cells_against_the_baseline():
    from experiments.ablation_report import table

    text = table(_rows(), ["npe_nsf/flow"])
    line = next(s for s in text.splitlines() if s.startswith("| v/auto"))
    # auto: 0.55 on seed 0's two cells, 0.6 on the other four; all six below NPE's 0.7
    assert "6 / 6 (-0.117)" in line
