"""Shared helpers: composing the real config tree, small training configs, IDX files.

Tests import the plain functions directly (``from conftest import compose``); pytest puts
this folder on ``sys.path`` because ``tests/`` is not a package.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import hydra
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"

# A run small enough to take a fraction of a second on two CPU cores.
SMALL_RUN = (
    "dataset=synthetic",
    "dataset.num_train=512",
    "dataset.num_val=256",
    "trainer.batch_size=64",
    "trainer.progress=false",
    "device=cpu",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "fashion_mnist: trains on the real Fashion-MNIST files (Debian's dataset-fashion-mnist); "
        "skipped when they are not installed",
    )


def compose(*overrides: str) -> DictConfig:
    """The config ``python train.py <overrides>`` would see (without the ``hydra`` node)."""
    GlobalHydra.instance().clear()
    try:
        with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra.compose("config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def small_run(*overrides: str) -> DictConfig:
    """A composed config for a tiny CPU run on synthetic data; ``overrides`` come last."""
    return compose(*SMALL_RUN, *overrides)


# ---------------------------------------------------------------------------- IDX files
IDX_NAMES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: torch.Tensor) -> bytes:
    """The IDX encoding of a uint8 tensor: magic 0x0000080<ndim>, big-endian int32 dims, data."""
    assert array.dtype == torch.uint8
    header = struct.pack(">I", 0x00000800 | array.dim())
    header += struct.pack(f">{array.dim()}I", *array.shape)
    return header + array.contiguous().numpy().tobytes()


def tiny_idx_set(num_train: int = 20, num_test: int = 10, seed: int = 0) -> dict[tuple[str, str], torch.Tensor]:
    """Random 28x28 uint8 images and labels; image ``i`` of a split has ``i`` in its corner
    pixel, so every image is distinct and traceable after a shuffle."""
    g = torch.Generator().manual_seed(seed)
    data = {}
    for split, n in (("train", num_train), ("test", num_test)):
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        images[:, 0, 0] = torch.arange(n, dtype=torch.uint8)
        data[(split, "images")] = images
        data[(split, "labels")] = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
    return data


def write_idx_set(folder: Path, data: dict[tuple[str, str], torch.Tensor], gz: bool = False) -> Path:
    """Write the four IDX files (plain, or gzipped with a .gz suffix) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, filename in IDX_NAMES.items():
        payload = idx_bytes(data[key])
        if gz:
            with gzip.open(folder / f"{filename}.gz", "wb") as handle:
                handle.write(payload)
        else:
            (folder / filename).write_bytes(payload)
    return folder
