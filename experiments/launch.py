#!/usr/bin/env python
"""Start the sweeps of one run configuration in the background, one process group each.

The one launcher for GPU (or many-core) runs: a configuration file names the sweeps, each a
list of ``experiments/sbi_sweep.py`` arguments; this script starts them detached (``setsid``),
each under ``timeout`` so that a cut run keeps every finished cell (sweeps resume cell by
cell), with its log beside its results::

    python experiments/launch.py experiments/configs/part1.json --out /tmp/run --limit 1400
    python experiments/launch.py experiments/configs/part1.json --out /tmp/run --status
    python experiments/launch.py experiments/configs/part1.json --out /tmp/run --dry-run
    python experiments/launch.py experiments/configs/part1.json --out /tmp/run \
        --resume-from experiments/results/part1_h200/results.csv   # skip the cells already measured

A configuration is JSON: ``{"description": ..., "env": {VAR: value}, "sweeps": [{"name": ...,
"args": [...]}]}``. An entry may name another experiment script (``"script":
"experiments/celeba_latent.py"``); it then gets ``--out`` and its args, the sweep script also
``--no-progress``. ``--only NAME ...`` starts a subset.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP = "experiments/sbi_sweep.py"


def load_config(path: Path) -> dict:
    config = json.loads(path.read_text())
    names = [s["name"] for s in config.get("sweeps", [])]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"{path}: needs sweeps with distinct names, got {names}")
    return config


def commands(config: dict, out: Path, limit: int, only: list[str] | None) -> list[tuple[str, list[str]]]:
    runs = []
    for sweep in config["sweeps"]:
        if only and sweep["name"] not in only:
            continue
        script = sweep.get("script", SWEEP)
        cmd = [
            "timeout",
            str(limit),
            sys.executable,
            str(ROOT / script),
            *(["--no-progress"] if script == SWEEP else []),
            "--out",
            str(out / sweep["name"]),
            *map(str, sweep["args"]),
        ]
        runs.append((sweep["name"], cmd))
    return runs


def status(out: Path, config: dict) -> None:
    for sweep in config["sweeps"]:
        folder = out / sweep["name"]
        results = folder / "results.csv"
        rows = max(0, len(results.read_text().splitlines()) - 1) if results.exists() else 0
        rows += (folder / "summary.json").exists()  # a single-result experiment (celeba_latent.py)
        log = out / f"{sweep['name']}.log"
        tail = log.read_text().strip().splitlines()[-1:] if log.exists() else ["(not started)"]
        print(f"{sweep['name']}: {rows} rows; {tail[0][:160] if tail else ''}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path, help="run configuration (JSON)")
    p.add_argument("--out", type=Path, required=True, help="results folder (one subfolder and log per sweep)")
    p.add_argument("--limit", type=int, default=1500, help="seconds each sweep may run (default 1500)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="start only these sweeps")
    p.add_argument("--dry-run", action="store_true", help="print the commands, start nothing")
    p.add_argument("--status", action="store_true", help="print rows done and the last log line per sweep")
    p.add_argument(
        "--resume-from",
        type=Path,
        metavar="CSV",
        help="a results.csv of finished cells (e.g. a merged report's): copied into every sweep "
        "folder that has none yet, so that the sweeps skip those cells",
    )
    args = p.parse_args(argv)
    config = load_config(args.config)
    if args.status:
        status(args.out, config)
        return 0
    env = {**os.environ, **{k: str(v) for k, v in config.get("env", {}).items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    if args.resume_from is not None and not args.dry_run:
        for sweep in config["sweeps"]:
            target = args.out / sweep["name"] / "results.csv"
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(args.resume_from, target)
    for name, cmd in commands(config, args.out, args.limit, args.only):
        print(f"{name}: {shlex.join(cmd)}")
        if not args.dry_run:
            with open(args.out / f"{name}.log", "ab") as log:
                subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
