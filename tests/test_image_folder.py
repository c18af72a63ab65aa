"""dataset=image_folder on generated PNG files, kept in memory and streamed."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose
from PIL import Image

from aeexp.config import ConfigError, validate
from aeexp.data.datasets import DataNotFoundError
from aeexp.data.image_folder import load_image_folder
from aeexp.data.images import StreamedImages, index_batches
from aeexp.training.run import run_training


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory):
    """Two classes of 12 RGB images each, 30x20 pixels, class 'dark' darker than 'light'."""
    root = tmp_path_factory.mktemp("pngs")
    g = torch.Generator().manual_seed(0)
    for label, (low, high) in {"dark": (0, 100), "light": (150, 255)}.items():
        (root / label).mkdir()
        for i in range(12):
            pixels = torch.randint(low, high, (30, 20, 3), generator=g, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / label / f"{i}.png")
    return root


def image_folder_run(png_folder, *overrides):
    return compose("dataset=image_folder", f"dataset.root={png_folder}", "dataset.size=[16,16]", "device=cpu",
                   "trainer.batch_size=8", "trainer.progress=false", "model=mlp", *overrides)


@pytest.mark.parametrize("channels", [1, 3])
def test_images_are_resized_cropped_and_converted(png_folder, channels):
    data = load_image_folder(str(png_folder), size=[16, 12], channels=channels, val_fraction=0.25,
                             test_fraction=0.125, num_workers=0)
    assert data.shape == (channels, 16, 12)
    assert (len(data.train_images), len(data.val_images), len(data.test_images)) == (15, 6, 3)
    assert data.train_images.dtype == torch.uint8 and data.test_images.dtype == torch.uint8
    labels = torch.cat([data.train_labels, data.val_labels, data.test_labels])
    assert set(labels.tolist()) == {0, 1}
    dark = data.train_images[data.train_labels == 0].float().mean()
    light = data.train_images[data.train_labels == 1].float().mean()
    assert dark < 100 < light


def test_streamed_images_give_the_same_batches_as_in_memory(png_folder):
    kept = load_image_folder(str(png_folder), size=[16], in_memory=True, num_workers=0)
    streamed = load_image_folder(str(png_folder), size=[16], in_memory=False, num_workers=2)
    assert isinstance(streamed.train_images, StreamedImages)
    assert torch.equal(kept.train_labels, streamed.train_labels)
    order = torch.randperm(len(kept.train_images), generator=torch.Generator().manual_seed(1))
    for _ in range(2):  # the DataLoader and its workers serve every epoch
        a = torch.cat(list(index_batches(kept.train_images, 5, order)))
        b = torch.cat(list(index_batches(streamed.train_images, 5, order)))
        assert torch.equal(a, b)


def test_memory_limit_decides_between_memory_and_streaming(png_folder):
    assert isinstance(load_image_folder(str(png_folder), memory_limit_mb=0, num_workers=0).train_images,
                      StreamedImages)
    assert isinstance(load_image_folder(str(png_folder), num_workers=0).train_images, torch.Tensor)


# In the inner loop, training from memory is test_bad_input.py's skip_bad_files run (train.py,
# in_memory left to choose memory); here the streamed one.
@pytest.mark.parametrize("in_memory", [pytest.param("true", marks=pytest.mark.slow), "false"])
def test_training_on_an_image_folder(png_folder, tmp_path, in_memory):
    run_training(image_folder_run(png_folder, f"dataset.in_memory={in_memory}", "trainer.epochs=2",
                                  "dataset.num_workers=1"), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["val_mse"] < 0.2
    assert (tmp_path / "images" / "reconstructions.png").is_file()


def test_missing_folder_and_bad_values(tmp_path):
    with pytest.raises(DataNotFoundError, match="dataset.root"):
        load_image_folder(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"dataset\.channels"):
        validate(compose("dataset=image_folder", f"dataset.root={tmp_path}", "dataset.channels=2"))
