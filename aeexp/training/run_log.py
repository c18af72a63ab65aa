"""What a run tells the world: ``metrics.json``, the one summary line per epoch (console and
``train.log``), TensorBoard scalars, the firing-rate histogram, pictures and HParams.

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
from torch.utils.tensorboard import SummaryWriter

from aeexp.checkpoints import write_json
from aeexp.pictures import save_png
from aeexp.training.tensorboard import group_choices, write_hparams
from aeexp.training.validation import ground_truth_figures

log = logging.getLogger("aeexp.training.trainer")

SCALARS = {  # TensorBoard tag -> EpochRecord field
    "train/loss": "train_loss", "train/mse": "train_mse", "train/penalty": "train_penalty", "train/aux": "train_aux",
    "val/mse": "val_mse", "val/denoise_mse": "val_denoise_mse", "val/noisy_input_mse": "val_noisy_mse",
    "val/fvu": "val_fvu", "val/explained_variance": "val_explained_variance",
    "latent/val_l0": "val_l0", "latent/dead_fraction": "dead_fraction",
    "latent/val_mean_activation": "val_mean_activation", "lr": "lr", "stage": "stage",
    "perf/samples_per_second": "samples_per_second", "perf/epoch_seconds": "epoch_seconds",
    "features/mmcs": "mmcs", "features/recovered_90": "recovered_90",  # data with true features
}
HPARAM_METRICS = ("val_mse", "best_val_mse", "best_score", "train_mse", "mmcs", "recovered_90")


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
    """Opened for the span of ``Trainer.fit`` (``with RunLog(run_dir) as run_log``)."""

    def __init__(self, run_dir: Path, recorded: dict[str, Any] | None = None, every_n_steps: int | None = None):
        self.run_dir = Path(run_dir)
        self.every_n_steps = every_n_steps  # trainer.log_every_n_steps (None: no per-step scalars)
        self.writer: SummaryWriter | None = None
        self.recorded = dict(recorded or {})  # what metrics.json and the checkpoints on disk agree on

    def __enter__(self) -> "RunLog":
        self.writer = SummaryWriter(log_dir=str(self.run_dir))
        return self

    def __exit__(self, *exc: object) -> None:
        self.writer.close()

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
        return metrics

    # ------------------------------------------------------------- TensorBoard
    def step(self, global_step: int, terms: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Per-step scalars (``step/*``, keyed by the global optimizer step, which a resumed
        run continues from its checkpoint) every ``trainer.log_every_n_steps`` steps.
        ``terms`` is the step's detached (loss, mse, penalty, aux): read (a device sync) only
        on the steps that are written, never when the option is off."""
        if not self.every_n_steps or global_step % self.every_n_steps:
            return
        loss, mse, penalty, aux = terms.tolist()
        for tag, value in (("step/train_loss", loss), ("step/train_mse", mse), ("step/train_penalty", penalty),
                           ("step/train_aux", aux), ("step/lr", optimizer.param_groups[0]["lr"])):
            if tag in ("step/train_loss", "step/train_mse", "step/lr") or value != 0:
                self.writer.add_scalar(tag, value, global_step)

    def epoch(self, record: EpochRecord, firing_rate: torch.Tensor, improved: bool) -> None:
        m = record.as_dict()
        for tag, key in SCALARS.items():
            if m.get(key) is not None:
                self.writer.add_scalar(tag, m[key], record.epoch)
        self.writer.add_histogram("latent/firing_rate", firing_rate.float().cpu(), record.epoch)
        # Feature density as SAE work plots it: log10 of each latent's firing frequency (dead: -10).
        self.writer.add_histogram("latent/log10_feature_density", (firing_rate.double().cpu() + 1e-10).log10(),
                                  record.epoch)
        self.writer.flush()
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
        """To TensorBoard and, the latest of each, to ``images/<name>.png``."""
        folder = self.run_dir / "images"
        folder.mkdir(exist_ok=True)
        for name, image in pictures.items():
            self.writer.add_image(name, image, epoch)
            save_png(image, folder / f"{name}.png")
        self.writer.flush()

    def finish(self, cfg: DictConfig, metrics: dict[str, Any]) -> None:
        """The final metrics.json and the HParams entry that lines this run up with others."""
        self.write(metrics)
        write_hparams(self.writer, OmegaConf.to_container(cfg, resolve=True),
                      {k: metrics[k] for k in HPARAM_METRICS if k in metrics}, group_choices())
