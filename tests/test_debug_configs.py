"""conf/debug (fast, overfit, limit), trainer.limit_*_batches, tags and optimized_metric."""

from __future__ import annotations

import json

import pytest
from conftest import compose
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aeexp.config import ConfigError, validate
from aeexp.training.run import run_training

SYNTHETIC = ("dataset=synthetic", "dataset.num_train=512", "dataset.num_val=256", "device=cpu",
             "trainer.num_threads=1", "trainer.progress=false")


def test_debug_fast_trains_one_epoch_on_four_batches(tmp_path):
    cfg = compose(*SYNTHETIC, "debug=fast", "trainer.batch_size=32")
    metrics = run_training(cfg, tmp_path)
    assert metrics["epoch"] == 1 and metrics["status"] == "completed" and metrics["tags"] == ["debug"]
    assert metrics["samples_per_second"] * metrics["train_seconds"] == pytest.approx(4 * 32)
    assert not (tmp_path / "images").exists()  # no pictures


@pytest.mark.slow
def test_debug_overfit_drives_the_training_loss_near_zero(tmp_path):
    cfg = compose(*SYNTHETIC, "debug=overfit", "trainer.epochs=150", "trainer.image_every=0")
    assert cfg.scheduler.name == "none" and cfg.trainer.limit_train_batches == 1
    run_training(cfg, tmp_path)
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])


def test_limit_batches_take_the_first_images_of_each_split(tmp_path):
    cfg = compose(*SYNTHETIC, "debug=limit", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
                  "trainer.batch_size=16", "trainer.val_batch_size=64", "trainer.epochs=1")
    run_training(cfg, tmp_path)
    log = (tmp_path / "metrics.json").read_text()
    metrics = json.loads(log)
    assert metrics["samples_per_second"] * metrics["train_seconds"] == pytest.approx(48)
    with pytest.raises(ConfigError, match="trainer.limit_val_batches: got 0"):
        validate(compose(*SYNTHETIC, "trainer.limit_val_batches=0"))


def test_tags_go_to_metrics_and_hparams(tmp_path):
    run_training(compose(*SYNTHETIC, "debug=fast", "tags=[baseline,fmnist]"), tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["tags"] == ["baseline", "fmnist"]
    assert b"baseline,fmnist" in next(tmp_path.glob("events.out.tfevents.*")).read_bytes()


def test_optimized_metric_names_a_validation_or_training_figure():
    assert validate(compose(*SYNTHETIC)).optimized_metric is None
    assert validate(compose(*SYNTHETIC, "optimized_metric=best_val_mse")).optimized_metric == "best_val_mse"
    with pytest.raises(ConfigError, match="optimized_metric: got 'test_mse', allowed: null"):
        validate(compose(*SYNTHETIC, "optimized_metric=test_mse"))
