"""Noise transforms and denoising training."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import inner_loop, small_run
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aeexp.config import ConfigError, validate
from aeexp.data.noise import GaussianNoise, MaskingNoise, SaltPepperNoise
from aeexp.training.run import run_training


def batch(n: int = 64, shape=(1, 28, 28), seed: int = 0) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed)) * 0.8 + 0.1


def test_masking_sets_exactly_the_fraction_of_each_samples_pixels():
    x = batch()  # no pixel is 0 before masking
    noisy = MaskingNoise(fraction=0.25)(x)
    per_sample = (noisy == 0).reshape(len(x), -1).sum(1)
    assert torch.equal(per_sample, torch.full((len(x),), round(0.25 * 784)))
    kept = noisy != 0
    assert torch.equal(noisy[kept], x[kept])


def test_masking_value_and_other_image_shapes():
    x = batch(8, (3, 5, 7))
    noisy = MaskingNoise(fraction=0.5, value=0.5)(x)
    assert torch.equal((noisy == 0.5).reshape(8, -1).sum(1), torch.full((8,), round(0.5 * 105)))


def test_salt_pepper_sets_half_to_zero_and_half_to_one_exactly():
    x = batch()
    noisy = SaltPepperNoise(fraction=0.2)(x)
    changed = round(0.2 * 784)
    assert torch.equal((noisy == 0).reshape(len(x), -1).sum(1), torch.full((len(x),), changed // 2))
    assert torch.equal((noisy == 1).reshape(len(x), -1).sum(1), torch.full((len(x),), changed - changed // 2))


def test_salt_and_pepper_are_spread_over_the_image_not_split_by_position():
    noisy = SaltPepperNoise(fraction=0.5)(batch(256))
    rows_with_salt = (noisy == 1).float().mean(dim=(0, 1, 3))
    assert rows_with_salt[:14].mean().item() == pytest.approx(rows_with_salt[14:].mean().item(), rel=0.1)


def test_gaussian_noise_has_the_requested_std_and_is_clamped():
    x = torch.full((256, 1, 28, 28), 0.5)
    unclamped = GaussianNoise(std=0.1, clamp=False)(x)
    difference = unclamped - x
    assert difference.mean().item() == pytest.approx(0.0, abs=2e-3)
    assert difference.std().item() == pytest.approx(0.1, rel=0.02)
    clamped = GaussianNoise(std=1.0)(x)
    assert clamped.min() >= 0 and clamped.max() <= 1
    assert (clamped == 0).any() and (clamped == 1).any()


def test_noise_leaves_the_clean_batch_untouched():
    x = batch()
    original = x.clone()
    for noise in (GaussianNoise(), MaskingNoise(), SaltPepperNoise()):
        noise(x)
        assert torch.equal(x, original)


def test_validation_noise_is_identical_every_time():
    x = batch()
    for noise in (GaussianNoise(), MaskingNoise(), SaltPepperNoise()):
        first = noise(x, noise.val_generator(x.device))
        second = noise(x, noise.val_generator(x.device))
        assert torch.equal(first, second)
        assert not torch.equal(noise(x), noise(x))  # training noise is fresh


@pytest.mark.parametrize(
    "overrides, key",
    inner_loop([
        (["noise=gaussian", "noise.std=-0.1"], "noise.std"),
        (["noise=masking", "noise.fraction=1.5"], "noise.fraction"),
        (["noise=masking", "noise.fraction=-0.1"], "noise.fraction"),
        (["noise=salt_pepper", "noise.fraction=2"], "noise.fraction"),
    ], 2),
)
def test_bad_noise_values_fail_naming_key_and_range(overrides, key):
    with pytest.raises(ConfigError) as err:
        validate(small_run(*overrides))
    assert err.value.key == key
    assert "allowed" in str(err.value)


@pytest.fixture(scope="module")
def denoising_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("denoise")
    # Three epochs: the denoiser is already far below the noisy input (about 0.035 against 0.16).
    overrides = ("noise=masking", "noise.fraction=0.5", "trainer.epochs=3", "model=mlp", "model.latent_dim=16",
                 "trainer.image_every=3")
    run_training(small_run(*overrides), run_dir)
    return run_dir


def test_denoising_training_beats_the_noisy_input(denoising_run):
    metrics = json.loads((denoising_run / "metrics.json").read_text())
    assert metrics["val_denoise_mse"] < metrics["val_noisy_mse"]


def test_denoising_metrics_and_triplets_reach_tensorboard(denoising_run):
    events = EventAccumulator(str(denoising_run), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert {"val/denoise_mse", "val/noisy_input_mse"} <= set(events.Tags()["scalars"])
    assert "denoising" in events.Tags()["images"]
    assert (denoising_run / "images" / "denoising.png").is_file()


def test_validation_noise_gives_the_same_figure_for_the_same_weights(tmp_path):
    from aeexp.models.factory import build_model
    from aeexp.training.run import load_data
    from aeexp.training.trainer import Trainer

    cfg = validate(small_run("noise=gaussian"))
    data = load_data(cfg)
    trainer = Trainer(cfg, build_model(cfg, data.shape), data, tmp_path, torch.device("cpu"))
    assert trainer.validate()["val_denoise_mse"] == trainer.validate()["val_denoise_mse"]


def test_a_denoiser_keeps_its_best_denoising_epoch(denoising_run):
    """With validated noise, best.pt and the scheduler follow val_denoise_mse (trainer.monitor=auto)."""
    metrics = json.loads((denoising_run / "metrics.json").read_text())
    assert metrics["monitor"] == "val_denoise_mse"
    events = EventAccumulator(str(denoising_run), size_guidance={"scalars": 0})
    events.Reload()
    history = {e.step: e.value for e in events.Scalars("val/denoise_mse")}
    best_epoch = min(history, key=history.get)
    assert metrics["best_epoch"] == best_epoch
    assert metrics["best_score"] == pytest.approx(history[best_epoch], rel=1e-6)
    best = torch.load(denoising_run / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == best_epoch
    assert best["metrics"]["val_denoise_mse"] == metrics["best_score"]
    assert best["metrics"]["val_mse"] == metrics["best_val_mse"]


def test_monitor_val_mse_can_still_be_chosen_for_a_denoiser(tmp_path):
    metrics = run_training(small_run("noise=gaussian", "trainer.epochs=2", "trainer.monitor=val_mse"), tmp_path)
    assert metrics["monitor"] == "val_mse"
    assert metrics["best_score"] == metrics["best_val_mse"]


@pytest.mark.parametrize("overrides", [["noise=none"], ["noise=gaussian", "noise.on_val=false"]])
def test_monitoring_denoising_without_validation_noise_is_refused(overrides):
    with pytest.raises(ConfigError) as err:
        validate(small_run(*overrides, "trainer.monitor=val_denoise_mse"))
    assert err.value.key == "trainer.monitor"
    assert "auto" in str(err.value)


def test_unknown_monitor_lists_the_choices():
    with pytest.raises(ConfigError) as err:
        validate(small_run("trainer.monitor=loss"))
    assert err.value.key == "trainer.monitor"
    assert "val_denoise_mse" in str(err.value)
