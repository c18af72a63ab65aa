"""Where a run keeps its place: ``last.pt`` every epoch (and inside an interrupted epoch),
``best.pt`` on each new best of ``trainer.monitor``, and the random streams that make a
resumed run continue exactly as an uninterrupted one would.

The guards around them live beside: :mod:`aeexp.training.run_dir` (what counts as an
existing run) and :mod:`aeexp.training.resume_settings` (reading a checkpoint to resume
from and what may change). Files are written atomically by :mod:`aeexp.checkpoints`.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import OmegaConf

from aeexp.checkpoints import CheckpointError, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)


def rng_state(shuffle: torch.Generator) -> dict[str, Any]:
    """Every random stream training draws from: torch's (noise, dropout, initialisation),
    CUDA's, the batch order's own generator and Python's."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "shuffle": shuffle.get_state(),
        "python": list(random.getstate()[1]),
    }


def restore_rng(rng: dict[str, Any], shuffle: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"].cpu())
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
    shuffle.set_state(rng["shuffle"].cpu())
    random.setstate((3, tuple(rng["python"]), None))


class Checkpoints:
    """``<run>/checkpoints/last.pt`` and ``best.pt``. Under DDP only rank 0 ``writes``, and
    every rank calls ``after_write`` (a barrier) once a save is through."""

    def __init__(self, run_dir: Path, writes: bool = True, after_write: Callable[[], None] | None = None):
        self.folder = Path(run_dir) / "checkpoints"
        self.writes, self.after_write = writes, after_write

    def path(self, which: str) -> Path:
        return self.folder / f"{which}.pt"

    def save(self, state: dict[str, Any], best: bool, on_best_saved=None) -> None:
        """``best.pt`` first when this epoch is the best (then ``on_best_saved()``), then ``last.pt``."""
        if best and self.writes:
            save_checkpoint(self.path("best"), state)
            if on_best_saved is not None:
                on_best_saved()
        self.save_last(state)

    def save_last(self, state: dict[str, Any]) -> None:
        if self.writes:
            save_checkpoint(self.path("last"), state)
        if self.after_write is not None:
            self.after_write()

    def set_damaged_last_aside(self) -> None:
        """Resuming from ``best.pt`` because ``last.pt`` is unreadable: keep the damaged file
        as ``last.pt.damaged`` rather than writing over it."""
        last = self.path("last")
        if not self.writes or not last.exists():
            return
        try:
            load_checkpoint(last)
        except CheckpointError:
            last.rename(last.with_name("last.pt.damaged"))
            log.warning("moved the unreadable %s aside to last.pt.damaged", last)


def trainer_state(trainer) -> dict[str, Any]:
    """Everything a resumed run needs to continue exactly: weights, optimizer, scheduler,
    grad scaler, the place in the stage sequence and inside an epoch, the stage's best, the
    random streams, the latest metrics and the config (as YAML text, for weights_only loading)."""
    return {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "scaler": trainer.scaler.state_dict(),
        "epoch": trainer.epoch,
        "stage_index": trainer.stage_index,
        "stage_name": trainer.stage.name,
        "stage_epoch": trainer.stage_epoch,
        "stage_stopped": trainer.stage_stopped,
        "global_step": trainer.global_step,
        "best_score": trainer.best_score,
        "best_val_mse": trainer.best_val_mse,
        "best_epoch": trainer.best_epoch,
        "reference_loss": trainer.reference_loss,
        "partial_epoch": trainer.partial_epoch,
        "metrics": dict(trainer.metrics),
        "rng": rng_state(trainer.shuffle_generator),
        "config": OmegaConf.to_yaml(trainer.cfg),
        "input_shape": list(trainer.data.shape),  # so aeexp.load_run rebuilds the model without the data
    }


def restore_trainer(trainer, state: dict[str, Any]) -> None:
    """The inverse of :func:`trainer_state`, into a trainer built from the same config."""
    stage_index = state.get("stage_index", 0)
    if stage_index != trainer.stage_index:
        _rebuild_stage(trainer, stage_index)
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.scheduler is not None and state.get("scheduler") is not None:
        trainer.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.epoch = state["epoch"]
    trainer.stage_epoch = state.get("stage_epoch", state["epoch"])
    trainer.stage_stopped = state.get("stage_stopped", bool(state.get("metrics", {}).get("stop_reason")))
    trainer.global_step = state["global_step"]
    trainer.best_val_mse = state["best_val_mse"]
    trainer.best_score = state.get("best_score", trainer.best_val_mse)  # checkpoints before trainer.monitor
    trainer.best_epoch = state["best_epoch"]
    trainer.reference_loss = state.get("reference_loss")
    trainer.partial_epoch = state.get("partial_epoch")
    trainer.metrics = dict(state.get("metrics", {}))
    trainer.run_log.recorded = dict(trainer.metrics)
    restore_rng(state["rng"], trainer.shuffle_generator)


def resume_trainer(trainer, checkpoint) -> bool:
    """Continue from a checkpoint read (and checked against this config) by
    :func:`aeexp.training.resume_settings.read_resume_checkpoint`; say whether there was one.

    Resuming from ``best.pt`` moves a damaged ``last.pt`` aside (``last.pt.damaged``)
    rather than losing it.
    """
    if checkpoint is None:  # run_dir.check_run_dir allows this only in a directory without results
        log.info("trainer.resume=true but %s does not exist (and the run directory holds no results): "
                 "starting from scratch", trainer.checkpoints.path(trainer.settings.resume_from))
        return False
    path, source, changes = checkpoint.path, trainer.settings.resume_from, checkpoint.changes
    try:
        trainer.load_state_dict(checkpoint.state)
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"{path} does not fit this config (it was written by a run with different settings: "
            f"{str(err).strip().splitlines()[0]}); resume with the run's own overrides, or use a new hydra.run.dir"
        ) from None
    if source == "best":
        trainer.checkpoints.set_damaged_last_aside()
    _apply_resume_changes(trainer, changes)
    log.info("resumed from %s after epoch %d, epoch %d of stage %d (%s) (best %s %.6f)", path, trainer.epoch,
             trainer.stage_epoch, trainer.stage_index + 1, trainer.stage.name, trainer.monitor, trainer.best_score)
    return True


def _apply_resume_changes(trainer, changes: dict[str, tuple[Any, Any]]) -> None:
    """Settings changed on resume (only those compare_resume_settings allows): say so, and
    put a new learning rate into the restored optimizer (and the scheduler's base)."""
    for key, (old, new) in changes.items():
        log.info("resume: %s changed from %r to %r", key, old, new)
    if "optimizer.lr" in changes:
        lr = float(changes["optimizer.lr"][1])
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr
        if trainer.scheduler is not None and hasattr(trainer.scheduler, "base_lrs"):
            trainer.scheduler.base_lrs = [lr for _ in trainer.scheduler.base_lrs]


def _rebuild_stage(trainer, index: int) -> None:
    """The structure of stage ``index``, before loading a checkpoint written in it: the
    previous stage's structure first, so ``train: [new]`` finds the same new layers."""
    from aeexp.training.stages import stage_model

    if not 0 <= index < len(trainer.stages):
        raise CheckpointError(
            f"the checkpoint was written in stage {index + 1}, but this config has {len(trainer.stages)} "
            "stage(s); resume with the run's own trainer.stages, or use a new hydra.run.dir")
    previous = None
    if index > 0:
        previous, _ = stage_model(trainer.cfg, trainer.data.shape, trainer.stages[index - 1])
    model, _ = stage_model(trainer.cfg, trainer.data.shape, trainer.stages[index], previous=previous)
    trainer._start_stage(index, model)
