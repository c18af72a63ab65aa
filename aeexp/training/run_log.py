"""What a run tells the world: ``metrics.json``, the one summary line per epoch (console and
``train.log``), and the figures, pictures and config handed to the trackers the ``logger``
group chooses (:mod:`aeexp.training.trackers`: TensorBoard by default, CSV, MLflow).

The trainer hands over an :class:`EpochRecord` per epoch; nothing here changes training.
``metrics.json`` always agrees with the checkpoints on disk: after a failed write (a full
disk) the failure is recorded with the figures of the last epoch whose files all landed.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from aeexp.checkpoints import write_json
from aeexp.pictures import save_png
from aeexp.training.trackers import Tracker, build_trackers
from aeexp.training.validation import ground_truth_figures

log = logging.getLogger("aeexp.training.trainer")


@dataclass
class EpochRecord:
    """One epoch's figures: a line of ``train.log``, the content of ``metrics.json``."""

    epoch: int
    epochs: int
    stage: int
    stages: int
    stage_name: str
    stage_epoch: int
    stage_epochs: int
    global_step: int
    train_loss: float
    train_mse: float
    train_penalty: float
    train_aux: float
    val_mse: float
    val_l0: float
    dead_fraction: float
    val_mean_activation: float
    val_denoise_mse: Optional[float]  # with noise on validation
    val_noisy_mse: Optional[float]
    monitor: str
    best_score: float
    best_val_mse: float
    best_epoch: int
    lr: float
    epoch_seconds: float
    train_seconds: float
    samples_per_second: float
    tags: list[str] = field(default_factory=list)
    status: str = "running"
    stop_reason: Optional[str] = None  # the scheduler ended the stage
    # Data that knows its true features (dataset=sparse_features): the decoder atoms against them
    # (validation.ground_truth_figures; aeexp.metrics.feature_recovery).
    mmcs: Optional[float] = None
    recovered_90: Optional[float] = None
    val_fvu: Optional[float] = None  # fraction of variance unexplained: SSE over the variance around the mean
    val_explained_variance: Optional[float] = None  # 1 - val_fvu

    @classmethod
    def of(cls, trainer, train: dict[str, float], val: dict[str, Any], lr: float, epoch_seconds: float,
           train_seconds: float) -> "EpochRecord":
        """The record of the epoch ``trainer`` has just finished (its counters already advanced)."""
        stage = trainer.stage
        return cls(
            epoch=trainer.epoch, epochs=sum(s.epochs for s in trainer.stages), stage=stage.index + 1,
            stages=len(trainer.stages), stage_name=stage.name, stage_epoch=trainer.stage_epoch,
            stage_epochs=stage.epochs, global_step=trainer.global_step, **{f"train_{k}": v for k, v in train.items()},
            val_mse=val["val_mse"], val_l0=val["val_l0"], dead_fraction=val["dead_fraction"],
            val_mean_activation=val["val_mean_activation"], val_denoise_mse=val.get("val_denoise_mse"),
            val_noisy_mse=val.get("val_noisy_mse"), monitor=trainer.monitor, best_score=trainer.best_score,
            best_val_mse=trainer.best_val_mse, best_epoch=trainer.best_epoch, lr=lr, epoch_seconds=epoch_seconds,
            train_seconds=train_seconds, samples_per_second=len(trainer.data.train_images) / train_seconds,
            tags=list(trainer.cfg.get("tags") or []), val_fvu=val.get("val_fvu"),
            val_explained_variance=None if val.get("val_fvu") is None else 1.0 - val["val_fvu"],
            stop_reason=f"learning rate {lr:.2e} fell below the scheduler's stop_lr" if trainer.stage_stopped else None,
            **ground_truth_figures(trainer.model, trainer.data, len(val["firing_rate"])))

    def as_dict(self) -> dict[str, Any]:
        """The metrics.json form (optional figures left out when absent)."""
        optional = ("val_denoise_mse", "val_noisy_mse", "stop_reason", "mmcs", "recovered_90", "val_fvu",
                    "val_explained_variance")
        return {k: v for k, v in asdict(self).items() if v is not None or k not in optional}


class RunLog:
    """Opened for the span of ``Trainer.fit`` (``with RunLog(run_dir, cfg=cfg) as run_log``).

    ``cfg``: the run's checked config; its ``logger`` node picks the trackers (none given, or
    no ``logger`` in it: TensorBoard alone, as before the group existed)."""

    def __init__(self, run_dir: Path, recorded: dict[str, Any] | None = None, every_n_steps: int | None = None,
                 cfg: DictConfig | None = None):
        self.run_dir = Path(run_dir)
        self.every_n_steps = every_n_steps  # trainer.log_every_n_steps (None: no per-step scalars)
        self.cfg = cfg
        self.trackers: list[Tracker] = build_trackers(cfg.get("logger") if cfg is not None else None, self.run_dir)
        self.running: list[Tracker] = []  # started and not yet finished
        self.recorded = dict(recorded or {})  # what metrics.json and the checkpoints on disk agree on

    def __enter__(self) -> "RunLog":
        config = _plain(self.cfg)
        for tracker in self.trackers:
            try:
                tracker.start(config)
            except BaseException:  # e.g. an MLflow server that does not answer: the others end cleanly
                self._finish_trackers("failed", self.recorded, self.cfg)
                raise
            self.running.append(tracker)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        """Trackers still running end with metrics.json's status (interrupted: a signal)."""
        try:
            self._finish_trackers(self.recorded.get("status") or "failed", self.recorded, self.cfg)
        except Exception as err:
            if exc_type is None:
                raise
            log.warning("a tracker could not record the run's end: %s: %s", type(err).__name__, err)

    def _finish_trackers(self, status: str, metrics: dict[str, Any], cfg: DictConfig | None) -> None:
        config = _plain(cfg)
        while self.running:
            self.running.pop(0).finish(status, metrics, config)

    # ------------------------------------------------------------- metrics.json
    def write(self, metrics: dict[str, Any]) -> None:
        write_json(self.run_dir / "metrics.json", metrics)
        self.recorded = dict(metrics)

    def best_saved(self, metrics: dict[str, Any]) -> None:
        """best.pt now holds this epoch: a failure before metrics.json is written must say so."""
        self.recorded.update({k: metrics[k] for k in ("best_score", "best_val_mse", "best_epoch")})

    def failed(self, err: BaseException) -> dict[str, Any]:
        metrics = {**self.recorded, "status": "failed", "error": f"{type(err).__name__}: {err}"}
        write_json(self.run_dir / "metrics.json", metrics)
        try:
            self._finish_trackers("failed", metrics, self.cfg)
        except Exception as tracker_err:  # the run's own error is the one to raise
            log.warning("a tracker could not record the failure: %s: %s", type(tracker_err).__name__, tracker_err)
        return metrics

    # ---------------------------------------------------------------- figures
    def step(self, global_step: int, terms: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Per-step scalars (``step/*``, keyed by the global optimizer step, which a resumed
        run continues from its checkpoint) every ``trainer.log_every_n_steps`` steps.
        ``terms`` is the step's detached (loss, mse, penalty, aux): read (a device sync) only
        on the steps that are written, never when the option is off."""
        if not self.every_n_steps or global_step % self.every_n_steps:
            return
        loss, mse, penalty, aux = terms.tolist()
        scalars = {tag: value for tag, value in (
            ("step/train_loss", loss), ("step/train_mse", mse), ("step/train_penalty", penalty),
            ("step/train_aux", aux), ("step/lr", optimizer.param_groups[0]["lr"]))
            if tag in ("step/train_loss", "step/train_mse", "step/lr") or value != 0}
        for tracker in self.trackers:
            tracker.step(scalars, global_step)

    def epoch(self, record: EpochRecord, firing_rate: torch.Tensor, improved: bool) -> None:
        figures = {k: v for k, v in asdict(record).items() if k not in ("tags", "status")}
        histograms = {
            "latent/firing_rate": firing_rate.float().cpu(),
            # Feature density as SAE work plots it: log10 of each latent's firing frequency (dead: -10).
            "latent/log10_feature_density": (firing_rate.double().cpu() + 1e-10).log10(),
        }
        for tracker in self.trackers:
            tracker.epoch(figures, record.epoch, histograms)
        stage = f"  stage {record.stage}/{record.stages} {record.stage_name}" if record.stages > 1 else ""
        denoise = f"  val_denoise_mse {record.val_denoise_mse:.6f}" if record.val_denoise_mse is not None else ""
        if record.mmcs is not None:
            denoise += f"  mmcs {record.mmcs:.4f}  recovered {record.recovered_90:.1%}"
        log.info("epoch %d/%d%s  train_loss %.6f  train_mse %.6f  val_mse %.6f%s%s  lr %.2e  %.2fs  %.0f samples/s",
                 record.stage_epoch, record.stage_epochs, stage, record.train_loss, record.train_mse, record.val_mse,
                 denoise, " (best)" if improved else "", record.lr, record.epoch_seconds, record.samples_per_second)
        if record.stop_reason:
            log.info("stopping%s: %s", f" stage {record.stage}" if record.stages > 1 else "", record.stop_reason)

    def pictures(self, pictures: dict[str, torch.Tensor], epoch: int) -> None:
        """The latest of each to ``images/<name>.png``, and every one to the trackers."""
        folder = self.run_dir / "images"
        folder.mkdir(exist_ok=True)
        pngs = {name: folder / f"{name}.png" for name in pictures}
        for name, image in pictures.items():
            save_png(image, pngs[name])
        for tracker in self.trackers:
            tracker.images(pictures, pngs, epoch)

    def finish(self, cfg: DictConfig, metrics: dict[str, Any]) -> None:
        """The final metrics.json; the trackers end the run as completed (TensorBoard: the
        HParams entry that lines this run up with others)."""
        self.write(metrics)
        self._finish_trackers("completed", metrics, cfg)


def _plain(cfg: DictConfig | None) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True) if cfg is not None else {}
