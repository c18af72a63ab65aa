"""The shared trainer on tiny synthetic runs: learning, resume, checkpoints, logs, determinism."""

from __future__ import annotations

import json
import math
import shutil
import stat
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aeexp.cli import USER_ERRORS
from aeexp.config import ConfigError
from aeexp.training.run import run_training
from conftest import TinyUserModel, compose, inner_loop, small_run

DROPOUT = "model.encoder=[{out_features:128,activation:relu,dropout:0.2}]"
VARIANTS = {"fc": (), "fc_dropout": (DROPOUT,)}


def train(run_dir: Path, *overrides: str) -> dict:
    return run_training(small_run(*overrides), run_dir)


def last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


@pytest.fixture(scope="module")
def run_a(tmp_path_factory) -> Path:
    """Three uninterrupted epochs, seed 0, a non-default code size."""
    run_dir = tmp_path_factory.mktemp("run_a")
    train(run_dir, "trainer.epochs=3", "model.latent_dim=16")
    return run_dir


# -------------------------------------------------------------------------- learning
def test_two_epochs_lower_the_loss(run_a):
    scalars = events(run_a)
    train_loss = [e.value for e in scalars.Scalars("train/loss")]
    val_mse = [e.value for e in scalars.Scalars("val/mse")]
    assert len(train_loss) == len(val_mse) == 3
    assert train_loss[1] < train_loss[0]
    assert val_mse[1] < val_mse[0]


# ------------------------------------------------------------------------ run files
def test_checkpoints_load_safely_and_hold_what_resume_needs(run_a):
    for name in ("last.pt", "best.pt"):
        state = torch.load(run_a / "checkpoints" / name, weights_only=True)
        assert {"model", "optimizer", "scheduler", "epoch", "rng", "config"} <= set(state), name
        config = OmegaConf.create(state["config"])
        assert config.model.latent_dim == 16
    assert last_checkpoint(run_a)["epoch"] == 3


def test_best_checkpoint_is_from_the_best_epoch(run_a):
    metrics = read_metrics(run_a)
    best = torch.load(run_a / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == metrics["best_epoch"]
    assert best["best_val_mse"] == metrics["best_val_mse"]


def test_metrics_json_holds_the_final_figures(run_a):
    metrics = read_metrics(run_a)
    expected = {"epoch", "train_loss", "train_mse", "val_mse", "best_val_mse", "lr",
                "epoch_seconds", "samples_per_second", "status"}
    assert expected <= set(metrics)
    assert metrics["status"] == "completed"
    assert metrics["epoch"] == 3
    assert metrics["best_val_mse"] <= metrics["val_mse"]


def test_tensorboard_has_scalars_and_reconstructions(run_a):
    event_files = list(run_a.glob("events.out.tfevents.*"))
    assert event_files
    tags = events(run_a).Tags()
    assert {"train/loss", "train/mse", "val/mse", "lr", "perf/samples_per_second"} <= set(tags["scalars"])
    assert tags["images"], "no reconstruction images in the event file"


def test_run_files_are_readable_like_other_files_the_user_creates(run_a, tmp_path):
    """Checkpoints and metrics.json should follow the umask (e.g. 0644), not be private (0600),
    so a TensorBoard server or a colleague sharing outputs/ can read them."""
    probe = tmp_path / "probe"
    probe.write_text("")
    expected = stat.S_IMODE(probe.stat().st_mode)
    for path in (run_a / "metrics.json", run_a / "checkpoints" / "last.pt"):
        assert stat.S_IMODE(path.stat().st_mode) == expected, f"{path.name}: {oct(path.stat().st_mode)}"


# --------------------------------------------------------------------------- resume
# Slow: the inner loop checks that resume ends like an uninterrupted run at an epoch boundary
# (test_stages.py, inside a stage) and mid-epoch (test_interrupts.py, with noise and dropout).
@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_resume_equals_an_uninterrupted_run(tmp_path, variant):
    extra = VARIANTS[variant]
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(whole, "trainer.epochs=3", *extra)
    train(split, "trainer.epochs=2", *extra)
    train(split, "trainer.epochs=3", "trainer.resume=true", *extra)

    a, b = last_checkpoint(whole), last_checkpoint(split)
    assert b["epoch"] == 3
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert read_metrics(split)["val_mse"] == read_metrics(whole)["val_mse"]
    assert read_metrics(split)["train_loss"] == read_metrics(whole)["train_loss"]


def test_resume_with_every_epoch_done_trains_nothing_more(tmp_path):
    train(tmp_path, "trainer.epochs=2")
    before = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    metrics = train(tmp_path, "trainer.epochs=2", "trainer.resume=true")
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == before
    assert metrics["epoch"] == 2 and metrics["status"] == "completed"
    assert last_checkpoint(tmp_path)["global_step"] == metrics["global_step"]


def test_resume_without_a_checkpoint_starts_from_scratch(tmp_path):
    metrics = train(tmp_path, "trainer.epochs=1", "trainer.resume=true")
    assert metrics["epoch"] == 1 and (tmp_path / "checkpoints" / "last.pt").exists()


@pytest.mark.slow  # the inner loop: test_run_dirs.py refuses a resume with a different model (train.py) or sparsity
def test_resume_with_a_different_model_is_a_user_error(tmp_path):
    """A config that does not fit the checkpoint should fail in one line (no traceback)."""
    train(tmp_path, "trainer.epochs=1", "model.latent_dim=16")
    with pytest.raises(USER_ERRORS):
        train(tmp_path, "trainer.epochs=2", "trainer.resume=true", "model.latent_dim=8")


# ---------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_metrics(run_a, tmp_path):
    again = train(tmp_path, "trainer.epochs=3", "model.latent_dim=16")
    first = read_metrics(run_a)
    assert again["train_loss"] == first["train_loss"]
    assert again["val_mse"] == first["val_mse"]


def test_different_seed_gives_different_metrics(run_a, tmp_path):
    other = train(tmp_path, "trainer.epochs=3", "model.latent_dim=16", "seed=1")
    first = read_metrics(run_a)
    assert other["train_loss"] != first["train_loss"]
    assert other["val_mse"] != first["val_mse"]


# ---------------------------------------------------------------- fail before work
@pytest.mark.parametrize(  # a bad value, and an unknown key, stand for the others in the inner loop
    "bad", inner_loop([("trainer.epochs=0",), ("+trainer.bogus=3",), ("optimizer.lr=-1",), ("model.latent_dim=0",),
                       ("device.precision=fp8",)], 2)
)
def test_bad_value_fails_before_any_work(tmp_path, bad):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError):
        train(run_dir, bad)
    assert not (run_dir / "checkpoints").exists()
    assert not (run_dir / "metrics.json").exists()
    assert not list(run_dir.glob("events.out.tfevents.*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_unavailable_device_fails_before_any_work(tmp_path):
    with pytest.raises(ConfigError) as info:
        train(tmp_path, "device=cuda")
    assert info.value.key == "device.name" and "cpu" in str(info.value)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow  # the inner loop: test_run_dirs.py's existing-run refusal through train.py (the whole tree kept)
def test_existing_run_without_resume_is_refused_and_left_untouched(tmp_path):
    train(tmp_path, "trainer.epochs=1")
    last = tmp_path / "checkpoints" / "last.pt"
    before = last.read_bytes()
    with pytest.raises(ConfigError) as info:
        train(tmp_path, "trainer.epochs=2")
    assert info.value.key == "trainer.resume"
    assert last.read_bytes() == before


# ------------------------------------------------------------- user classes in a run
def test_users_own_model_and_optimizer_train_via_target(tmp_path):
    cfg = small_run("trainer.epochs=1")
    cfg.model = OmegaConf.create({"_target_": f"{TinyUserModel.__module__}.TinyUserModel", "latent_dim": 4})
    cfg.optimizer = OmegaConf.create({"_target_": "torch.optim.SGD", "lr": 0.1})
    metrics = run_training(cfg, tmp_path)
    assert metrics["status"] == "completed"
    assert last_checkpoint(tmp_path)["model"]["encoder.1.weight"].shape == (4, 784)


# ------------------------------------------------------------------- real data
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.fashion_mnist
@pytest.mark.skipif(
    not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)
def test_one_epoch_of_fc_on_fashion_mnist_beats_the_mean_image(tmp_path):
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in FASHION_MNIST.glob("*-ubyte.gz"):
        shutil.copy(path, raw / path.name)
    cfg = compose(
        "dataset=fashion_mnist", f"dataset.root={tmp_path / 'data'}", "dataset.download=false",
        "model=fc", "device=cpu", "trainer.epochs=1", "trainer.progress=false",
    )
    metrics = run_training(cfg, tmp_path / "run")
    assert metrics["val_mse"] < 0.03  # predicting the mean image: 0.087


def test_absurd_learning_rate_stops_with_the_divergence_message(tmp_path):
    from aeexp.training.trainer import DivergenceError

    run_dir = tmp_path / "run"
    with pytest.raises(DivergenceError, match=r"epoch 1 at step \d+.*lower optimizer\.lr \(now 1e\+06\)"):
        train(run_dir, "trainer.epochs=2", "optimizer.lr=1e6")
    assert read_metrics(run_dir)["status"] == "failed"
    assert not (run_dir / "checkpoints" / "best.pt").exists()


def test_a_nan_loss_later_in_a_run_fails_cleanly_and_keeps_best(tmp_path, monkeypatch):
    from aeexp.training.trainer import DivergenceError, Trainer

    run_dir = tmp_path / "run"
    train(run_dir, "trainer.epochs=1")
    best = (run_dir / "checkpoints" / "best.pt").read_bytes()
    real_step = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self, clean: real_step(self, clean) * float("nan"))
    with pytest.raises(DivergenceError, match=r"epoch 2 at step 1 "):
        train(run_dir, "trainer.epochs=3", "trainer.resume=true")
    assert (run_dir / "checkpoints" / "best.pt").read_bytes() == best
    assert read_metrics(run_dir)["status"] == "failed"
    torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)


def test_divergence_factor_null_lets_a_finite_loss_run(tmp_path):
    """lr=1e6 gives finite losses near 1e31: the default factor stops the run, null lets it finish."""
    from aeexp.training.trainer import DivergenceError

    absurd = ("trainer.epochs=1", "optimizer.lr=1e6")
    with pytest.raises(DivergenceError):
        train(tmp_path / "default", *absurd)
    metrics = train(tmp_path / "null", *absurd, "trainer.divergence_factor=null")
    assert metrics["status"] == "completed"
    assert math.isfinite(metrics["train_loss"]) and metrics["train_loss"] > 1e6  # absurd, finite, not stopped
