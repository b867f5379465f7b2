"""The GPU launcher: sweeps start detached, --wait follows them, --pack brings results as one archive."""

import importlib.util
import json
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("launch", ROOT / "experiments" / "launch.py")
launch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(launch)


def test_wait_follows_the_sweeps_and_pack_leaves_checkpoints_behind(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        "import sys, time, pathlib\n"
        "out = pathlib.Path(sys.argv[sys.argv.index('--out') + 1]); out.mkdir(parents=True)\n"
        "time.sleep(float(sys.argv[-1])); (out / 'summary.json').write_text('{}')\n"
        "(out / 'model.pt').write_bytes(b'0' * 10); print('x' * 50000)\n"
    )
    config = tmp_path / "c.json"
    sweeps = [{"name": n, "script": str(script), "args": [t]} for n, t in (("fast", "0.1"), ("slow", "30"))]
    config.write_text(json.dumps({"description": "", "sweeps": sweeps}))
    out = tmp_path / "run"
    assert launch.main([str(config), "--out", str(out), "--limit", "60"]) == 0
    assert launch.wait(out, 3, poll=0.1) == ["slow"]  # the slow sweep outlives the wait
    assert (out / "fast" / "summary.json").exists() and not (out / "slow" / "summary.json").exists()
    left = launch.pack(out, tmp_path / "r.tgz")
    assert "fast/model.pt" in left and not any(n.endswith(".log") for n in left)
    with tarfile.open(tmp_path / "r.tgz") as tar:
        names = tar.getnames()
        log = tar.extractfile("fast.log").read()
    assert "fast/summary.json" in names and "fast/model.pt" not in names
    assert 0 < len(log) <= 20_000  # the log's tail only
    launch.os.killpg(int((out / "slow.pid").read_text()), 15)
    assert launch.wait(out, 10, poll=0.1) == []


def test_checkpoints_travel_in_parts_and_restore_byte_for_byte(tmp_path):
    import os

    out = tmp_path / "run"
    files = {
        "t100k/checkpoints/two_moons_n100000_seed0_x.pt": os.urandom(40_000),
        "pw/jobs/gmm40_seed0.ckpt.pw": os.urandom(5_000),
    }
    for name, data in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    (out / "t100k" / "results.csv").write_text("task\n")  # results travel in --pack, not here
    (out / "t100k" / "checkpoints" / "half.pt.tmp").write_bytes(b"0")  # a write in progress
    parts = launch.pack_checkpoints(out, tmp_path / "back" / "ckpt", part_bytes=10_000)
    assert len(parts) >= 5 and all(p.stat().st_size <= 10_000 for p in parts)
    assert [p.name for p in parts][:2] == ["ckpt.00", "ckpt.01"]
    fresh = tmp_path / "fresh"
    assert sorted(launch.restore_checkpoints(tmp_path / "back" / "ckpt", fresh)) == sorted(files)
    for name, data in files.items():
        assert (fresh / name).read_bytes() == data
    assert not (fresh / "t100k" / "results.csv").exists()


def test_checkpoints_are_packed_after_the_wait(tmp_path):
    # 2026-12-03: packing before --wait sent back the checkpoints of the call's start, not its end
    script = tmp_path / "job.py"
    script.write_text(
        "import sys, time, pathlib\n"
        "out = pathlib.Path(sys.argv[sys.argv.index('--out') + 1]); (out / 'checkpoints').mkdir(parents=True)\n"
        "(out / 'checkpoints' / 'a.pt').write_bytes(b'early'); time.sleep(1.5)\n"
        "(out / 'checkpoints' / 'a.pt').write_bytes(b'late')\n"
    )
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"description": "", "sweeps": [{"name": "s", "script": str(script), "args": []}]}))
    out = tmp_path / "run"
    assert launch.main([str(config), "--out", str(out)]) == 0
    prefix = tmp_path / "back" / "ckpt"
    assert launch.main([str(config), "--out", str(out), "--wait", "30", "--pack-checkpoints", str(prefix)]) == 0
    launch.restore_checkpoints(prefix, tmp_path / "fresh")
    assert (tmp_path / "fresh" / "s" / "checkpoints" / "a.pt").read_bytes() == b"late"
