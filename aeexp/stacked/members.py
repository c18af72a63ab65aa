"""One member of a stacked group: a lone run's :class:`~aeexp.training.trainer.Trainer`,
set up as :func:`aeexp.training.run.run_training` sets it up, plus what a lone run has to
itself and a shared process does not: the global random streams, the log file and Hydra's
record of the job.

A member's trainer, model, optimizer, scheduler, checkpoints and run log are the lone
run's own objects; :mod:`aeexp.stacked.training` only replaces the per-batch step by one
stacked step for every member.
"""

from __future__ import annotations

import logging
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from aeexp.config import validate
from aeexp.data.vectors import vector_run_notes
from aeexp.device import resolve_device
from aeexp.threads import configure_cpu_threads
from aeexp.training.checkpointing import resume_trainer
from aeexp.training.resume_settings import read_resume_checkpoint
from aeexp.training.run import finished_metrics, load_data, seed_everything
from aeexp.training.run_dir import check_run_dir
from aeexp.training.stages import plan_stages, stage_model
from aeexp.training.trainer import Trainer

log = logging.getLogger("aeexp.training.run")  # the lines a lone run's log has, under the same name


def capture_rng() -> dict[str, Any]:
    """The process-wide random streams a lone run owns alone (torch, CUDA, Python's)."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Member:
    """A lone run's trainer and the process-wide state that belongs to it."""

    trainer: Trainer
    rng: dict[str, Any]
    hydra_config: DictConfig | None = None  # the job's whole config (hydra node included), under Hydra
    log_handler: logging.Handler | None = None  # the job's own log file
    outcome: Any = None  # final metrics (dict) or the exception that ended the run
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.outcome is not None

    @contextmanager
    def scope(self, hydra: bool = False) -> Iterator["Member"]:
        """Run something as this member's process would: its random streams, its log file
        (and, with ``hydra``, its Hydra config, which HParams read)."""
        restore_rng(self.rng)
        root = logging.getLogger()
        if self.log_handler is not None:
            root.addHandler(self.log_handler)
        previous = HydraConfig.instance().cfg if hydra and self.hydra_config is not None else None
        if previous is not None:
            HydraConfig.instance().set_config(self.hydra_config)
        try:
            yield self
        finally:
            self.rng = capture_rng()
            if self.log_handler is not None:
                root.removeHandler(self.log_handler)
            if previous is not None:
                HydraConfig.instance().cfg = previous


class DataCache:
    """The splits each member would load, loaded once where loading draws nothing from the
    global random stream (a loader that does is called again for every member, so each
    member's stream stays a lone run's)."""

    def __init__(self) -> None:
        self._splits: dict[str, Any] = {}

    def load(self, cfg: DictConfig, device: torch.device):
        key = OmegaConf.to_yaml(cfg.dataset) + str((cfg.trainer.limit_train_batches, cfg.trainer.limit_val_batches,
                                                    cfg.trainer.batch_size, cfg.trainer.val_batch_size, str(device)))
        if key in self._splits:
            return self._splits[key]
        before = torch.get_rng_state()
        data = load_data(cfg)
        limits = cfg.trainer.limit_train_batches, cfg.trainer.limit_val_batches
        if any(n is not None for n in limits):  # as run_training: the same few batches every epoch
            data = data.limited(*(n and n * size for n, size in zip(limits, (cfg.trainer.batch_size,
                                                                            cfg.trainer.val_batch_size))))
        data = data.without_test().to(device)
        if torch.equal(before, torch.get_rng_state()):
            self._splits[key] = data
        return data


def prepare_member(cfg: DictConfig, run_dir: Path | str, data: DataCache, on_start: Callable[[], None] | None = None,
                   stop_requested: Callable[[], int | None] | None = None) -> Member | dict[str, Any]:
    """What :func:`aeexp.training.run.run_training` does before ``Trainer.fit``, in the same
    order (so the random streams reach training in the same state): validate, skip a finished
    run (its metrics are returned), guard the run directory, read the resume checkpoint, seed,
    data, model, trainer, resume, ``model.txt``, ``on_start``. Refusals raise as there."""
    cfg = validate(cfg)
    run_dir = Path(run_dir)
    finished = finished_metrics(run_dir, cfg) if cfg.trainer.resume else None
    if finished is not None:
        log.info("%s already completed %d epochs: skipping (trainer.resume=true)", run_dir, finished["epoch"])
        return finished
    device = resolve_device(cfg.device.name)
    check_run_dir(run_dir, cfg.trainer.resume, cfg.trainer.resume_from)
    checkpoint = read_resume_checkpoint(cfg, run_dir) if cfg.trainer.resume else None
    configure_cpu_threads(cfg.trainer.num_threads)
    torch.set_flush_denormal(True)
    seed_everything(cfg.seed)
    splits = data.load(cfg, device)
    model, _ = stage_model(cfg, splits.shape, plan_stages(cfg)[0])
    log.info("data %s: %d train / %d val %s of shape %s (validation: %s; the test split is left to "
             "evaluate.py); device %s (stacked)", splits.name or cfg.dataset.get("name"), len(splits.train_images),
             len(splits.val_images), splits.kind, splits.shape, splits.val_note, device)
    if not splits.is_image:
        vector_run_notes(cfg)
    trainer = Trainer(cfg, model, splits, run_dir, device, stop_requested)
    if cfg.trainer.resume:
        resume_trainer(trainer, checkpoint)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "model.txt").write_text(f"{model}\n")
    log.info("model: %s, %s parameters (layers: %s)", type(model).__name__,
             f"{sum(p.numel() for p in model.parameters()):,}", run_dir / "model.txt")
    if on_start is not None:
        on_start()
    return Member(trainer, capture_rng())
