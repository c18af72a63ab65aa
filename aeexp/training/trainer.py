"""The shared training loop: one trainer for every model, sparsity method and noise.

It owns the optimizer and scheduler, the per-epoch loop over device-resident batches,
validation, checkpoints (``last.pt`` every epoch, ``best.pt`` on a new best validation
MSE), ``metrics.json``, TensorBoard, resume, and training stages (``trainer.stages``: tied
then untied, greedy layer-wise). It knows nothing about a specific model: it calls
``model(x) -> (x_hat, z)`` and ``model.bottleneck.penalty(z)``, and at a stage change asks
:func:`aeexp.training.stages.stage_model` for the next model and what it trains.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import save_image
from tqdm import tqdm

from aeexp.data.images import ImageSplits, head, index_batches, num_batches, to_float
from aeexp.metrics import DenoisingStats, ReconstructionStats
from aeexp.models.layerwise import describe_layers
from aeexp.registry import NOISE, OPTIMIZERS, SCHEDULERS
from aeexp.device import autocast, grad_scaler
from aeexp.checkpoints import CheckpointError, load_checkpoint, save_checkpoint, write_json
from aeexp.training.interrupts import InterruptWatch, TrainingInterrupted
from aeexp.training.optim import should_stop, step_scheduler
from aeexp.training.resume_settings import ResumeCheckpoint
from aeexp.pictures import code_image, dictionary_grid, latent_scatter, reconstruction_rows
from aeexp.training.stages import Stage, plan_stages, stage_model
from aeexp.training.tensorboard import write_hparams

log = logging.getLogger(__name__)


class DivergenceError(FloatingPointError):
    """The loss became non-finite or absurdly large; the message names epoch and step."""


class Trainer:
    def __init__(
        self,
        cfg: DictConfig,
        model: nn.Module,
        data: ImageSplits,
        run_dir: Path,
        device: torch.device,
        stop_requested: Callable[[], int | None] | None = None,
    ):
        self.cfg = cfg
        self.settings = cfg.trainer
        self.device = device
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.data = data.to(device)
        self.noise = NOISE.build(cfg.noise)
        self.monitor = self._resolve_monitor(self.settings.get("monitor", "auto"))
        self.precision = cfg.device.precision
        self.scaler = grad_scaler(device, self.precision)
        # Shuffling has its own generator so its stream does not depend on anything else.
        self.shuffle_generator = torch.Generator().manual_seed(int(cfg.seed))
        self.epoch = 0  # epochs completed, over all stages
        self.global_step = 0
        # Where an interrupted epoch stopped: its number, batches done, the shuffle generator's
        # state before the epoch's permutation, and the running loss sums; None between epochs.
        self.partial_epoch: dict[str, Any] | None = None
        self.interrupts = InterruptWatch(poll=stop_requested)
        self.metrics: dict[str, Any] = {}
        self.recorded: dict[str, Any] = {}  # what metrics.json and the checkpoints on disk agree on
        # ``model`` is the first stage's (``stage_model``); later stages are built on the way.
        self.stages: list[Stage] = plan_stages(cfg)
        self._start_stage(0, model)
        # Fixed validation samples for pictures: the same ones every epoch, so they compare.
        self.fixed_batch = to_float(head(self.data.val_images, self.settings.num_images))
        self.code_batch = to_float(head(self.data.val_images, 512))

    # ---------------------------------------------------------------- stages
    def _start_stage(self, index: int, model: nn.Module) -> None:
        """Make ``model`` the one being trained in stage ``index``, with a fresh optimizer
        and scheduler over its trainable parameters. The best validation MSE and the
        divergence reference start afresh too: a stage's model (tied, shallower) does not
        compare with another stage's, so ``best.pt`` always holds the current stage's best."""
        stage = self.stages[index]
        self.stage_index = index
        self.stage_epoch = 0  # epochs completed in this stage
        self.stage_stopped = False  # the scheduler ended this stage early
        self.model = model.to(self.device)
        self.optimizer = OPTIMIZERS.build(stage.optimizer, params=[p for p in model.parameters() if p.requires_grad])
        self.scheduler = SCHEDULERS.build(stage.scheduler, optimizer=self.optimizer, epochs=stage.epochs)
        # torch.compile wraps the same parameters, so checkpoints stay those of self.model.
        forward_parts = self.model.forward_parts
        self.forward_parts = torch.compile(forward_parts) if self.cfg.device.compile else forward_parts
        self.best_score = math.inf  # best value of self.monitor this stage
        self.best_val_mse = math.inf  # val_mse of that best epoch
        self.best_epoch = 0
        self.reference_loss: float | None = None  # the stage's first batch loss, for divergence checks

    def _resolve_monitor(self, monitor: str) -> str:
        """``auto``: a denoiser's best epoch is its best at denoising, not at copying clean
        inputs (which it was not trained for); anything else follows ``val_mse``."""
        if monitor != "auto":
            return monitor
        return "val_denoise_mse" if self.noise.active and self.noise.on_val else "val_mse"

    @property
    def stage(self) -> Stage:
        return self.stages[self.stage_index]

    def _stage_done(self) -> bool:
        return self.stage_stopped or self.stage_epoch >= self.stage.epochs

    def _next_stage(self) -> None:
        """Build the next stage's model from the current one (weights carried over by name
        and shape) and train it from here."""
        stage = self.stages[self.stage_index + 1]
        model, trainable = stage_model(self.cfg, self.data.shape, stage, previous=self.model)
        self._start_stage(stage.index, model)
        log.info("stage %d/%d (%s): %d epochs at most, %d of %d parameters train\n%s", stage.index + 1,
                 len(self.stages), stage.name, stage.epochs, sum(p.numel() for p in trainable),
                 sum(p.numel() for p in model.parameters()), describe_layers(model))

    def _rebuild_stage(self, index: int) -> None:
        """The structure of stage ``index``, before loading a checkpoint written in it: the
        previous stage's structure first, so ``train: [new]`` finds the same new layers."""
        if not 0 <= index < len(self.stages):
            raise CheckpointError(
                f"the checkpoint was written in stage {index + 1}, but this config has {len(self.stages)} "
                "stage(s); resume with the run's own trainer.stages, or use a new hydra.run.dir")
        previous = None
        if index > 0:
            previous, _ = stage_model(self.cfg, self.data.shape, self.stages[index - 1])
        model, _ = stage_model(self.cfg, self.data.shape, self.stages[index], previous=previous)
        self._start_stage(index, model)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "stage_index": self.stage_index,
            "stage_name": self.stage.name,
            "stage_epoch": self.stage_epoch,
            "stage_stopped": self.stage_stopped,
            "global_step": self.global_step,
            "best_score": self.best_score,
            "best_val_mse": self.best_val_mse,
            "best_epoch": self.best_epoch,
            "reference_loss": self.reference_loss,
            "partial_epoch": self.partial_epoch,
            "metrics": dict(self.metrics),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "shuffle": self.shuffle_generator.get_state(),
                "python": list(random.getstate()[1]),
            },
            "config": OmegaConf.to_yaml(self.cfg),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        stage_index = state.get("stage_index", 0)
        if stage_index != self.stage_index:
            self._rebuild_stage(stage_index)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = state["epoch"]
        self.stage_epoch = state.get("stage_epoch", state["epoch"])
        self.stage_stopped = state.get("stage_stopped", bool(state.get("metrics", {}).get("stop_reason")))
        self.global_step = state["global_step"]
        self.best_val_mse = state["best_val_mse"]
        self.best_score = state.get("best_score", self.best_val_mse)  # checkpoints before trainer.monitor
        self.best_epoch = state["best_epoch"]
        self.reference_loss = state.get("reference_loss")
        self.partial_epoch = state.get("partial_epoch")
        self.metrics = dict(state.get("metrics", {}))
        self.recorded = dict(self.metrics)
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        self.shuffle_generator.set_state(rng["shuffle"].cpu())
        random.setstate((3, tuple(rng["python"]), None))

    def resume(self, checkpoint: ResumeCheckpoint | None) -> bool:
        """Continue from a checkpoint read (and checked against this config) by
        :func:`aeexp.training.resume_settings.read_resume_checkpoint`; say whether there was one.

        Resuming from ``best.pt`` moves a damaged ``last.pt`` aside (``last.pt.damaged``)
        rather than losing it.
        """
        if checkpoint is None:  # run.check_run_dir allows this only in a directory without results
            log.info("trainer.resume=true but %s does not exist (and the run directory holds no results): "
                     "starting from scratch", self.checkpoint_dir / f"{self.settings.resume_from}.pt")
            return False
        path, source, changes = checkpoint.path, self.settings.resume_from, checkpoint.changes
        try:
            self.load_state_dict(checkpoint.state)
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(
                f"{path} does not fit this config (it was written by a run with different settings: "
                f"{str(err).strip().splitlines()[0]}); resume with the run's own overrides, or use a new hydra.run.dir"
            ) from None
        last = self.checkpoint_dir / "last.pt"
        if source == "best" and last.exists():
            try:
                load_checkpoint(last)
            except CheckpointError:
                last.rename(last.with_name("last.pt.damaged"))
                log.warning("moved the unreadable %s aside to last.pt.damaged", last)
        self._apply_resume_changes(changes)
        log.info("resumed from %s after epoch %d, epoch %d of stage %d (%s) (best %s %.6f)", path, self.epoch,
                 self.stage_epoch, self.stage_index + 1, self.stage.name, self.monitor, self.best_score)
        return True

    def _apply_resume_changes(self, changes: dict[str, tuple[Any, Any]]) -> None:
        """Settings changed on resume (only those compare_resume_settings allows): say so, and
        put a new learning rate into the restored optimizer (and the scheduler's base)."""
        for key, (old, new) in changes.items():
            log.info("resume: %s changed from %r to %r", key, old, new)
        if "optimizer.lr" in changes:
            lr = float(changes["optimizer.lr"][1])
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            if self.scheduler is not None and hasattr(self.scheduler, "base_lrs"):
                self.scheduler.base_lrs = [lr for _ in self.scheduler.base_lrs]

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        """Run every stage, each until its epochs are done or its scheduler says stop;
        return the final metrics.

        SIGTERM / SIGINT stop the run at the next step with ``last.pt`` saved
        (TrainingInterrupted); a failure leaves the checkpoints as they were.
        """
        writer = SummaryWriter(log_dir=str(self.run_dir))
        try:
            with self.interrupts:
                if self._stage_done() and self.stage_index == len(self.stages) - 1:
                    log.info("nothing to do: %d epochs already done, the last stage is finished", self.epoch)
                while True:
                    if self._stage_done():
                        if self.stage_index == len(self.stages) - 1:
                            break
                        self._next_stage()
                        continue
                    self._run_epoch(self.epoch + 1, writer)
            self.metrics["status"] = "completed"
            write_json(self.run_dir / "metrics.json", self.metrics)
            write_hparams(
                writer,
                OmegaConf.to_container(self.cfg, resolve=True),
                {k: self.metrics[k] for k in ("val_mse", "best_val_mse", "best_score", "train_mse") if k in self.metrics},
            )
        except TrainingInterrupted:
            raise  # metrics.json already says interrupted; last.pt holds the point to resume from
        except BaseException as err:
            # Record the failure without touching the checkpoints: best.pt stays valid, and the
            # figures written are those of the last epoch whose files all reached the disk (so
            # best_epoch / best_score agree with best.pt even when a write failed, e.g. a full disk).
            self.metrics = {**self.recorded, "status": "failed", "error": f"{type(err).__name__}: {err}"}
            write_json(self.run_dir / "metrics.json", self.metrics)
            raise
        finally:
            writer.close()
        return self.metrics

    def _run_epoch(self, epoch: int, writer: SummaryWriter) -> None:
        start = time.perf_counter()
        train = self.train_epoch(epoch)
        train_seconds = time.perf_counter() - start
        val = self.validate()
        val_mse, score = val["val_mse"], val[self.monitor]
        step_scheduler(self.scheduler, score)
        epoch_seconds = time.perf_counter() - start
        self.epoch = epoch
        self.stage_epoch += 1
        improved = score < self.best_score
        if improved:
            self.best_score, self.best_val_mse, self.best_epoch = score, val_mse, epoch
        lr = self.optimizer.param_groups[0]["lr"]
        self.metrics = {
            "epoch": epoch,
            "epochs": sum(stage.epochs for stage in self.stages),
            "stage": self.stage_index + 1,
            "stages": len(self.stages),
            "stage_name": self.stage.name,
            "stage_epoch": self.stage_epoch,
            "stage_epochs": self.stage.epochs,
            "global_step": self.global_step,
            "train_loss": train["loss"],
            "train_mse": train["mse"],
            "train_penalty": train["penalty"],
            "train_aux": train["aux"],
            "val_mse": val_mse,
            "val_l0": val["val_l0"],
            "dead_fraction": val["dead_fraction"],
            "val_mean_activation": val["val_mean_activation"],
            **{k: val[k] for k in ("val_denoise_mse", "val_noisy_mse") if k in val},
            "monitor": self.monitor,
            "best_score": self.best_score,
            "best_val_mse": self.best_val_mse,
            "best_epoch": self.best_epoch,
            "lr": lr,
            "epoch_seconds": epoch_seconds,
            "train_seconds": train_seconds,
            "samples_per_second": len(self.data.train_images) / train_seconds,
            "tags": list(self.cfg.get("tags") or []),
            "status": "running",
        }
        if should_stop(self.scheduler):
            self.stage_stopped = True
            self.metrics["stop_reason"] = f"learning rate {lr:.2e} fell below the scheduler's stop_lr"
        state = self.state_dict()
        if improved:
            save_checkpoint(self.checkpoint_dir / "best.pt", state)
            # best.pt now holds this epoch: a failure before metrics.json is written must say so
            self.recorded.update({k: self.metrics[k] for k in ("best_score", "best_val_mse", "best_epoch")})
        save_checkpoint(self.checkpoint_dir / "last.pt", state)
        write_json(self.run_dir / "metrics.json", self.metrics)
        self.recorded = dict(self.metrics)
        self._log_epoch(writer, epoch, improved, val["firing_rate"])

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training set in a fresh random order (or the rest of a pass
        that a signal interrupted: same order, same running sums)."""
        self.model.train()
        images = self.data.train_images
        batch_size = self.settings.batch_size
        start, sums = 0, torch.zeros(4, dtype=torch.float64, device=self.device)  # loss, mse, penalty, aux
        if self.partial_epoch is not None and self.partial_epoch["epoch"] == epoch:
            self.shuffle_generator.set_state(self.partial_epoch["shuffle"].cpu())
            start, sums = self.partial_epoch["batches_done"], self.partial_epoch["sums"].to(self.device)
        self.partial_epoch = None
        shuffle_state = self.shuffle_generator.get_state()
        order = torch.randperm(len(images), generator=self.shuffle_generator).to(self.device)
        bar = tqdm(
            index_batches(images, batch_size, order, start=start),
            initial=start,
            total=num_batches(len(images), batch_size),
            desc=f"epoch {epoch} (stage {self.stage_index + 1} {self.stage_epoch + 1}/{self.stage.epochs})",
            leave=False,
            dynamic_ncols=True,
            disable=None if self.settings.progress else True,
        )
        for step, clean in enumerate(bar, start=start + 1):
            terms = self.train_step(clean)
            sums += terms.to(torch.float64) * len(clean)
            # Reading the loss forces a device sync, so on a GPU look only every few steps.
            if self.device.type == "cpu" or step % 10 == 0 or self.reference_loss is None:
                self._check_divergence(terms[0].item(), epoch, step)
            if not bar.disable and step % 20 == 0:
                bar.set_postfix(loss=f"{terms[0].item():.5f}", refresh=False)
            if self.interrupts.requested:
                bar.close()
                self._stop_inside_epoch(epoch, step, shuffle_state, sums)
        bar.close()
        loss_sum, mse_sum, penalty_sum, aux_sum = (sums / len(images)).tolist()
        self._check_divergence(loss_sum, epoch, step)
        return {"loss": loss_sum, "mse": mse_sum, "penalty": penalty_sum, "aux": aux_sum}

    def _stop_inside_epoch(self, epoch: int, step: int, shuffle_state: torch.Tensor, sums: torch.Tensor) -> None:
        """Save where this epoch stands into last.pt, then stop with TrainingInterrupted."""
        self.partial_epoch = {"epoch": epoch, "batches_done": step, "shuffle": shuffle_state, "sums": sums.cpu()}
        save_checkpoint(self.checkpoint_dir / "last.pt", self.state_dict())
        signum = self.interrupts.signum
        name = signal.Signals(signum).name
        log.warning("%s received: saved %s after step %d of epoch %d", name, self.checkpoint_dir / "last.pt",
                    step, epoch)
        self.metrics["status"] = "interrupted"
        write_json(self.run_dir / "metrics.json", self.metrics)
        self.interrupts.pass_on()
        raise TrainingInterrupted(
            signum,
            f"interrupted by {name} in epoch {epoch} after step {step}; last.pt holds that point: "
            f"continue with trainer.resume=true hydra.run.dir={self.run_dir}",
        )

    def _check_divergence(self, loss: float, epoch: int, step: int) -> None:
        """Stop on a non-finite loss, or one ``trainer.divergence_factor`` times above the
        run's first batch: Adam with an absurd learning rate gives finite but absurd losses."""
        if self.reference_loss is None:
            self.reference_loss = loss
        factor = self.settings.divergence_factor
        too_large = factor is not None and self.reference_loss > 0 and loss > factor * self.reference_loss
        if math.isfinite(loss) and not too_large:
            return
        lr = self.optimizer.param_groups[0]["lr"]
        raise DivergenceError(
            f"training diverged in epoch {epoch} at step {step} of the epoch (global step {self.global_step}): "
            f"loss {loss:.4g} against {self.reference_loss:.4g} at the first step; try a lower "
            f"optimizer.lr (now {lr:g}), or trainer.grad_clip. best.pt is untouched."
        )

    def train_step(self, clean: torch.Tensor) -> torch.Tensor:
        """One optimizer step; returns the detached (loss, mse, penalty, aux) of the batch.

        loss = reconstruction MSE against the clean batch + the sparsity penalty + the
        sparsity method's auxiliary loss (each zero where a method has none).
        """
        inputs = self.noise(clean)
        bottleneck = self.model.bottleneck
        with autocast(self.device, self.precision):
            x_hat, z, code = self.forward_parts(inputs)
            mse = F.mse_loss(x_hat.float(), clean)
            penalty = bottleneck.penalty(z.float())
            aux = bottleneck.auxiliary(code, clean - x_hat.float(), self.model.decode)
            loss = mse + penalty + aux
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.settings.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.global_step += 1
        return torch.stack([loss.detach(), mse.detach(), penalty.detach(), aux.detach()])

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Validation figures, in eval mode (so lifetime sparsity is off, as in the seed).

        ``val_mse`` is the mean over every pixel of the validation set (not a mean of batch
        means) and counts reconstruction only. Latent figures: ``val_l0`` nonzero code
        entries per sample, ``dead_fraction`` features never nonzero over the pass,
        ``val_mean_activation`` mean |z|, and ``firing_rate`` per feature (a tensor).
        """
        self.model.eval()
        stats = ReconstructionStats()
        for clean in index_batches(self.data.val_images, self.settings.val_batch_size):
            with autocast(self.device, self.precision):
                x_hat, z = self.model(clean)
            stats.update(clean, x_hat, z)
        f = stats.figures()
        figures = {"val_mse": f["mse"], "val_l0": f["l0"], "dead_fraction": f["dead_fraction"],
                   "val_mean_activation": f["mean_activation"], "firing_rate": f["firing_rate"]}
        if self.noise.active and self.noise.on_val:
            figures.update(self.validate_denoising())
        return figures

    @torch.no_grad()
    def validate_denoising(self) -> dict[str, float]:
        """``val_denoise_mse``: reconstructions of noisy validation inputs against the clean
        images; ``val_noisy_mse``: the noisy inputs' own error (what doing nothing scores).
        The noise comes from a fixed-seed generator, so it is identical every epoch."""
        stats = DenoisingStats()
        generator = self.noise.val_generator(self.device)
        for clean in index_batches(self.data.val_images, self.settings.val_batch_size):
            noisy = self.noise(clean, generator)
            with autocast(self.device, self.precision):
                x_hat, _ = self.model(noisy)
            stats.update(clean, noisy, x_hat)
        f = stats.figures()
        return {"val_denoise_mse": f["mse"], "val_noisy_mse": f["noisy_mse"]}

    # --------------------------------------------------------------- logging
    def _log_epoch(self, writer: SummaryWriter, epoch: int, improved: bool, firing_rate: torch.Tensor) -> None:
        m = self.metrics
        writer.add_scalar("train/loss", m["train_loss"], epoch)
        writer.add_scalar("train/mse", m["train_mse"], epoch)
        writer.add_scalar("train/penalty", m["train_penalty"], epoch)
        writer.add_scalar("train/aux", m["train_aux"], epoch)
        writer.add_scalar("val/mse", m["val_mse"], epoch)
        if "val_denoise_mse" in m:
            writer.add_scalar("val/denoise_mse", m["val_denoise_mse"], epoch)
            writer.add_scalar("val/noisy_input_mse", m["val_noisy_mse"], epoch)
        writer.add_scalar("latent/val_l0", m["val_l0"], epoch)
        writer.add_scalar("latent/dead_fraction", m["dead_fraction"], epoch)
        writer.add_scalar("latent/val_mean_activation", m["val_mean_activation"], epoch)
        writer.add_histogram("latent/firing_rate", firing_rate.float().cpu(), epoch)
        writer.add_scalar("lr", m["lr"], epoch)
        writer.add_scalar("stage", m["stage"], epoch)
        writer.add_scalar("perf/samples_per_second", m["samples_per_second"], epoch)
        writer.add_scalar("perf/epoch_seconds", m["epoch_seconds"], epoch)
        image_every = self.settings.image_every
        last = self._stage_done()
        if image_every and (epoch % image_every == 0 or epoch == 1 or last):
            self._log_pictures(writer, epoch)
        writer.flush()
        stage = f"  stage {m['stage']}/{m['stages']} {m['stage_name']}" if m["stages"] > 1 else ""
        log.info(
            "epoch %d/%d%s  train_loss %.6f  train_mse %.6f  val_mse %.6f%s%s  lr %.2e  %.2fs  %.0f samples/s",
            m["stage_epoch"], m["stage_epochs"], stage, m["train_loss"], m["train_mse"], m["val_mse"],
            f"  val_denoise_mse {m['val_denoise_mse']:.6f}" if "val_denoise_mse" in m else "",
            " (best)" if improved else "", m["lr"], m["epoch_seconds"], m["samples_per_second"],
        )
        if "stop_reason" in m:
            log.info("stopping%s: %s", f" stage {m['stage']}" if m["stages"] > 1 else "", m["stop_reason"])

    @torch.no_grad()
    def _log_pictures(self, writer: SummaryWriter, epoch: int) -> None:
        """The seed's three panels (and, with noise, noisy / denoised / clean rows), to
        TensorBoard and to ``images/*.png`` (latest epoch)."""
        self.model.eval()
        x_hat, _ = self.model(self.fixed_batch)
        _, codes = self.model(self.code_batch)
        pictures = {
            "reconstructions": reconstruction_rows(self.fixed_batch, x_hat),
            "codes": code_image(codes),
            "dictionary": dictionary_grid(self.model, tuple(codes.shape[1:])),
        }
        if self.noise.active:
            noisy = self.noise(self.fixed_batch, self.noise.val_generator(self.device))
            pictures["denoising"] = reconstruction_rows(noisy, self.model(noisy)[0], self.fixed_batch)
        if codes[0].numel() == 2:
            pictures["latent_scatter"] = latent_scatter(self.validation_codes(), self.data.val_labels)
        folder = self.run_dir / "images"
        folder.mkdir(exist_ok=True)
        for name, image in pictures.items():
            writer.add_image(name, image, epoch)
            save_image(image, folder / f"{name}.png")

    @torch.no_grad()
    def validation_codes(self) -> torch.Tensor:
        """The codes of the whole validation set, in order (eval mode)."""
        self.model.eval()
        batches = index_batches(self.data.val_images, self.settings.val_batch_size)
        return torch.cat([self.model.encode(clean).float().reshape(len(clean), -1) for clean in batches])
