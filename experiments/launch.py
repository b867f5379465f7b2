#!/usr/bin/env python
"""Start the sweeps of one run configuration in the background, one process group each.

The one launcher for GPU (or many-core) runs: a configuration file names the sweeps, each a
list of ``experiments/sbi_sweep.py`` arguments; this script starts them detached (``setsid``),
each under ``timeout`` so that a cut run keeps every finished cell (sweeps resume cell by
cell), with its log beside its results::

    python experiments/launch.py experiments/configs/part1.json --out /tmp/run --limit 1400
    python experiments/launch.py experiments/configs/part1.json --out /tmp/run --status
    python experiments/launch.py experiments/configs/part1.json --out /tmp/run --dry-run
    python experiments/launch.py experiments/configs/part1.json --out /tmp/run --wait 560 --pack $OUT/run.tgz
    python experiments/launch.py experiments/configs/part1.json --out /tmp/run \
        --resume-from experiments/results/part1_h200/results.csv   # skip the cells already measured

A configuration is JSON: ``{"description": ..., "env": {VAR: value}, "sweeps": [{"name": ...,
"args": [...]}]}``. An entry may name another experiment script (``"script":
"experiments/celeba_latent.py"``); it then gets ``--out`` and its args, the sweep script also
``--no-progress``. ``--only NAME ...`` starts a subset.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
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


def tail(path: Path, size: int) -> bytes:
    """The last ``size`` bytes of a file, without reading the rest (logs with progress bars grow large)."""
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - size))
        return fh.read()


def status(out: Path, config: dict) -> None:
    for sweep in config["sweeps"]:
        folder = out / sweep["name"]
        results = folder / "results.csv"
        rows = max(0, len(results.read_text().splitlines()) - 1) if results.exists() else 0
        rows += (folder / "summary.json").exists()  # a single-result experiment (celeba_latent.py)
        log = out / f"{sweep['name']}.log"
        last = tail(log, 4096).decode(errors="replace").strip().splitlines()[-1:] if log.exists() else ["(not started)"]
        print(f"{sweep['name']}: {rows} rows; {last[0][:160] if last else ''}")


def running(out: Path) -> list[str]:
    """The sweeps of ``out`` whose process (recorded in ``NAME.pid`` at launch) is still alive."""
    alive = []
    for pid_file in sorted(out.glob("*.pid")):
        try:
            pid = int(pid_file.read_text())
            os.kill(pid, 0)
        except (ProcessLookupError, ValueError):
            continue
        except PermissionError:
            pass
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z":
            continue  # ended, not yet reaped by its parent
        alive.append(pid_file.stem)
    return alive


def wait(out: Path, seconds: float, poll: float = 5.0) -> list[str]:
    """Wait until every launched sweep has ended or ``seconds`` have passed; the ones still running."""
    deadline = time.monotonic() + seconds
    while (alive := running(out)) and time.monotonic() < deadline:
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
    return alive


def pack(out: Path, archive: Path, max_bytes: int = 5_000_000, log_tail: int = 20_000) -> list[str]:
    """One ``.tar.gz`` of the results under ``out``: a device returns few files per call, so
    results travel as one archive. Checkpoints (``*.pt``) and files over ``max_bytes`` stay
    behind (their names are returned); logs keep their last ``log_tail`` bytes."""
    left = []
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(p for p in out.rglob("*") if p.is_file()):
            name = str(path.relative_to(out))
            if path.suffix in (".pt", ".pid", ".lock") or (path.suffix != ".log" and path.stat().st_size > max_bytes):
                left.append(name)
            elif path.suffix == ".log":
                data = tail(path, log_tail)
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), int(path.stat().st_mtime)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.add(path, arcname=name)
    return left


CHECKPOINT_PATTERNS = ("*/checkpoints/*.pt", "*/jobs/*.ckpt*")  # sbi_sweep.py's and density2d.py's


def pack_checkpoints(out: Path, prefix: Path, part_bytes: int = 15 * 2**20) -> list[Path]:
    """The unfinished trainings' checkpoints under ``out`` as one ``.tar.gz`` cut into parts of
    at most ``part_bytes`` (``PREFIX.00``, ``PREFIX.01``, ...: a device call returns files of at
    most 16 MiB), so that a training cut by the end of a device session continues in the next
    (carry the parts, then ``--restore-checkpoints``). Returns the parts written."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for pattern in CHECKPOINT_PATTERNS:
            for path in sorted(out.glob(pattern)):
                if path.is_file() and not path.name.endswith(".tmp"):
                    tar.add(path, arcname=str(path.relative_to(out)))
    data = buffer.getvalue()
    prefix.parent.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, start in enumerate(range(0, len(data), part_bytes)):
        parts.append(prefix.with_name(f"{prefix.name}.{i:02d}"))
        parts[-1].write_bytes(data[start : start + part_bytes])
    return parts


def restore_checkpoints(prefix: Path, out: Path) -> list[str]:
    """Join ``PREFIX.NN`` (from :func:`pack_checkpoints`) and unpack the checkpoints into ``out``,
    where the relaunched sweeps resume them. Returns the files restored."""
    parts = sorted(prefix.parent.glob(f"{prefix.name}.[0-9][0-9]"))
    if not parts:
        raise FileNotFoundError(f"no checkpoint parts {prefix}.NN")
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts)), mode="r:gz") as tar:
        names = tar.getnames()
        tar.extractall(out, filter="data")
    return names


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
    p.add_argument("--wait", type=float, metavar="SECONDS", help="wait up to SECONDS for the launched sweeps to end")
    p.add_argument("--pack", type=Path, metavar="ARCHIVE", help="write the results (no checkpoints) into one .tar.gz")
    p.add_argument(
        "--pack-checkpoints",
        type=Path,
        metavar="PREFIX",
        help="also write the unfinished trainings' checkpoints as PREFIX.00, PREFIX.01, ... (15 MiB parts)",
    )
    p.add_argument(
        "--restore-checkpoints",
        type=Path,
        metavar="PREFIX",
        help="before launching, unpack PREFIX.NN (from --pack-checkpoints) into --out",
    )
    args = p.parse_args(argv)
    config = load_config(args.config)
    if args.status or args.wait is not None or args.pack is not None or args.pack_checkpoints is not None:
        if args.wait is not None:
            alive = wait(args.out, args.wait)
            print(f"still running: {', '.join(alive)}" if alive else "all sweeps ended")
        if args.pack_checkpoints is not None:  # after the wait: the newest epoch travels
            parts = pack_checkpoints(args.out, args.pack_checkpoints)
            print(f"checkpoints: {', '.join(p.name for p in parts)}")
        if args.pack is not None:
            left = pack(args.out, args.pack)
            print(f"packed {args.pack}" + (f"; left out: {', '.join(left)}" if left else ""))
        status(args.out, config)
        return 0
    env = {**os.environ, **{k: str(v) for k, v in config.get("env", {}).items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    if args.restore_checkpoints is not None and not args.dry_run:
        print(f"restored: {', '.join(restore_checkpoints(args.restore_checkpoints, args.out))}")
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
                proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
                )
            (args.out / f"{name}.pid").write_text(str(proc.pid))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
