"""From a composed config to a finished run: validate, build, train.

``train.py`` is a thin Hydra wrapper around :func:`run_training`; tests and notebooks call
it directly with a config from Hydra's compose API.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from aeexp.config import ConfigError, validate
from aeexp.data.images import ImageSplits
from aeexp.registry import DATASETS
from aeexp.training.device import resolve_device
from aeexp.training.stages import build_model, plan_stages, stage_model  # noqa: F401  (build_model: imported from here)
from aeexp.training.trainer import Trainer

log = logging.getLogger(__name__)


def load_data(cfg: DictConfig) -> ImageSplits:
    return DATASETS.build(cfg.dataset)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def finished_metrics(run_dir: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """The metrics of a run in ``run_dir`` that already completed what ``cfg`` asks, else None;
    this is what lets a rerun sweep skip its finished jobs."""
    path = run_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    planned = sum(stage.epochs for stage in plan_stages(cfg))
    last_stage_stopped = bool(metrics.get("stop_reason")) and metrics.get("stage") == metrics.get("stages")
    done = metrics.get("epochs", 0) >= planned or last_stage_stopped
    return metrics if metrics.get("status") == "completed" and done else None


def run_training(cfg: DictConfig, run_dir: Path | str) -> dict[str, Any]:
    """Train the run ``cfg`` describes in ``run_dir``; return its final metrics.

    Everything that can be checked without data is checked first, so a bad value fails
    in a second and leaves nothing half-written.
    """
    cfg = validate(cfg)
    run_dir = Path(run_dir)
    finished = finished_metrics(run_dir, cfg) if cfg.trainer.resume else None
    if finished is not None:
        log.info("%s already completed %d epochs: skipping (trainer.resume=true)", run_dir, finished["epoch"])
        return finished
    device = resolve_device(cfg.device.name)
    last = run_dir / "checkpoints" / "last.pt"
    if last.exists() and not cfg.trainer.resume:
        raise ConfigError(
            "trainer.resume",
            f"got False, but {run_dir} already holds checkpoints; pass trainer.resume=true to "
            "continue that run, or choose a new hydra.run.dir (nothing was overwritten)",
        )
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    # Subnormal floats (frozen or freshly grown layers of layer-wise training produce them)
    # make CPU arithmetic up to 50x slower; flushing them to zero changes no figure we report.
    torch.set_flush_denormal(True)
    seed_everything(cfg.seed)
    data = load_data(cfg)
    model, _ = stage_model(cfg, data.shape, plan_stages(cfg)[0])
    log.info("data %s: %d train / %d val images of shape %s (validation: %s; the test split is left to "
             "evaluate.py); device %s", data.name or cfg.dataset.get("name"), len(data.train_images),
             len(data.val_images), data.shape, data.val_note, device)
    log.info("model: %d parameters\n%s", sum(p.numel() for p in model.parameters()), model)
    trainer = Trainer(cfg, model, data.without_test(), run_dir, device)
    if cfg.trainer.resume:
        trainer.resume()
    return trainer.fit()
