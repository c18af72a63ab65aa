"""From a composed config to a finished run: validate, build, train.

``train.py`` is a thin Hydra wrapper around :func:`run_training`; tests and notebooks call
it directly with a config from Hydra's compose API.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig

from aeexp.config import validate
from aeexp.data.images import ImageSplits
from aeexp.data.vectors import vector_run_notes
from aeexp.registry import DATASETS
from aeexp.threads import configure_cpu_threads
from aeexp.device import resolve_device
from aeexp.training import distributed
from aeexp.training.checkpointing import resume_trainer
from aeexp.training.resume_settings import read_resume_checkpoint
from aeexp.training.run_dir import check_run_dir
from aeexp.training.stages import plan_stages, stage_model
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


def load_splits(cfg: DictConfig, device: torch.device) -> ImageSplits:
    """What the trainer trains and validates on: the train and validation splits on
    ``device`` (the test split is left to evaluate.py), ``trainer.limit_*_batches`` applied."""
    with distributed.main_rank_first():  # a download happens once
        data = load_data(cfg)
    limits = cfg.trainer.limit_train_batches, cfg.trainer.limit_val_batches
    if any(n is not None for n in limits):  # conf/debug: the same few batches every epoch
        data = data.limited(*(n and n * size for n, size in zip(limits, (cfg.trainer.batch_size,
                                                                        cfg.trainer.val_batch_size))))
    return data.without_test().to(device)


def run_training(cfg: DictConfig, run_dir: Path | str, on_start: Callable[[], None] | None = None,
                 stop_requested: Callable[[], int | None] | None = None) -> dict[str, Any]:
    """Train the run ``cfg`` describes in ``run_dir``; return its final metrics.

    Everything that can be checked without data is checked first, so a bad value fails
    in a second and leaves nothing half-written; ``on_start`` is called once every check
    has passed, right before the first write into ``run_dir`` (``train.py`` writes
    ``.hydra/`` there, so a refused command leaves an earlier run's record alone);
    ``stop_requested`` tells a sweep's job that the sweep was signalled (see
    :class:`aeexp.training.interrupts.InterruptWatch`).
    """
    prepared = prepare_run(cfg, run_dir, on_start, stop_requested)
    return prepared if isinstance(prepared, dict) else prepared.fit()


def prepare_run(cfg: DictConfig, run_dir: Path | str, on_start: Callable[[], None] | None = None,
                stop_requested: Callable[[], int | None] | None = None,
                load: Callable[[DictConfig, torch.device], ImageSplits] = load_splits) -> Trainer | dict[str, Any]:
    """:func:`run_training` up to ``Trainer.fit``: the trainer, ready to fit (resumed where
    asked), or the metrics of a run that already completed (``trainer.resume=true``).
    ``load``: where the splits come from (:mod:`aeexp.stacked` loads them once for N runs)."""
    cfg = validate(cfg)
    run_dir = Path(run_dir)
    ranks = distributed.start()  # under torchrun: this process's rank (train.py joined the group already)
    finished = finished_metrics(run_dir, cfg) if cfg.trainer.resume else None
    if finished is not None:
        log.info("%s already completed %d epochs: skipping (trainer.resume=true)", run_dir, finished["epoch"])
        return finished
    device = distributed.rank_device(resolve_device(cfg.device.name))  # torchrun: cuda:LOCAL_RANK
    distributed.check_supported(cfg, device)
    check_run_dir(run_dir, cfg.trainer.resume, cfg.trainer.resume_from)
    checkpoint = read_resume_checkpoint(cfg, run_dir) if cfg.trainer.resume else None
    distributed.check_same_run_dir(run_dir, checkpoint)  # and every rank has looked before rank 0 writes there
    configure_cpu_threads(cfg.trainer.num_threads)  # null: one per core, passive OpenMP waiting (aeexp.threads)
    # Subnormal floats (frozen or freshly grown layers of layer-wise training produce them)
    # make CPU arithmetic up to 50x slower; flushing them to zero changes no figure we report.
    torch.set_flush_denormal(True)
    seed_everything(cfg.seed)
    data = load(cfg, device)
    model, _ = stage_model(cfg, data.shape, plan_stages(cfg)[0])
    log.info("data %s: %d train / %d val %s of shape %s (validation: %s; the test split is left to "
             "evaluate.py); device %s", data.name or cfg.dataset.get("name"), len(data.train_images),
             len(data.val_images), data.kind, data.shape, data.val_note, device)
    if not data.is_image:
        vector_run_notes(cfg)
    trainer = Trainer(cfg, model, data, run_dir, device, stop_requested)
    if cfg.trainer.resume:
        resume_trainer(trainer, checkpoint)
    # The layers go to a file (and the debug log), so the console shows one line per epoch.
    if ranks.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "model.txt").write_text(f"{model}\n")
    log.info("model: %s, %s parameters (layers: %s)", type(model).__name__,
             f"{sum(p.numel() for p in model.parameters()):,}", run_dir / "model.txt")
    log.debug("%s", model)
    if on_start is not None:
        on_start()
    return trainer
