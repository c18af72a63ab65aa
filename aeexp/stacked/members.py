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

from aeexp.training.run import load_splits, prepare_run
from aeexp.training.trainer import Trainer


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
    """The splits each member would load (:func:`aeexp.training.run.load_splits`), loaded
    once where loading draws nothing from the global random stream (a loader that does is
    called again for every member, so each member's stream stays a lone run's)."""

    def __init__(self) -> None:
        self._splits: dict[str, Any] = {}

    def load(self, cfg: DictConfig, device: torch.device):
        key = OmegaConf.to_yaml(cfg.dataset) + str((cfg.trainer.limit_train_batches, cfg.trainer.limit_val_batches,
                                                    cfg.trainer.batch_size, cfg.trainer.val_batch_size, str(device)))
        if key in self._splits:
            return self._splits[key]
        before = torch.get_rng_state()
        data = load_splits(cfg, device)
        if torch.equal(before, torch.get_rng_state()):
            self._splits[key] = data
        return data


def prepare_member(cfg: DictConfig, run_dir: Path | str, data: DataCache, on_start: Callable[[], None] | None = None,
                   stop_requested: Callable[[], int | None] | None = None) -> Member | dict[str, Any]:
    """What :func:`aeexp.training.run.run_training` does before ``Trainer.fit``
    (:func:`~aeexp.training.run.prepare_run`, the splits from ``data``), so the random
    streams reach training in the same state; the member, or a finished run's metrics
    (``trainer.resume=true``). Refusals raise as there."""
    prepared = prepare_run(cfg, run_dir, on_start, stop_requested, load=data.load)
    return prepared if isinstance(prepared, dict) else Member(prepared, capture_rng())
