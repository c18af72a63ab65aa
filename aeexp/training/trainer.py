"""The shared training loop: one trainer for every model, sparsity method and noise.

It owns the model, optimizer and scheduler of each stage (``trainer.stages``: tied then
untied, greedy layer-wise) and the per-epoch loop over device-resident batches. It knows
nothing about a specific model: it calls ``model.forward_parts(x)``, the bottleneck's
``penalty`` and ``auxiliary``, and at a stage change asks
:func:`aeexp.training.stages.stage_model` for the next model and what it trains. Its two
collaborators keep the rest: :class:`~aeexp.training.checkpointing.Checkpoints` (``last.pt``,
``best.pt`` on each new best of ``trainer.monitor``, the random streams) and
:class:`~aeexp.training.run_log.RunLog` (``metrics.json``, ``train.log``, TensorBoard).
"""

from __future__ import annotations

import logging
import math
import signal
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm

from aeexp.data.images import ImageSplits, epoch_order, head, index_batches, num_batches, to_float
from aeexp.device import autocast, grad_scaler
from aeexp.models.layerwise import describe_layers
from aeexp.pictures import training_pictures
from aeexp.registry import NOISE, OPTIMIZERS, SCHEDULERS
from aeexp.training.checkpointing import restore_trainer, trainer_state
from aeexp.training.distributed import Distributed
from aeexp.training.divergence import DivergenceError, check_divergence  # noqa: F401  (DivergenceError: raised here)
from aeexp.training import model_hooks
from aeexp.training.interrupts import InterruptWatch, TrainingInterrupted
from aeexp.training.optim import should_stop, step_scheduler
from aeexp.training.run_log import EpochRecord, RunLog
from aeexp.training.stages import Stage, plan_stages, stage_model
from aeexp.training.validation import monitored_metric, validation_codes, validation_figures

log = logging.getLogger(__name__)


class Trainer:
    def __init__(self, cfg: DictConfig, model: nn.Module, data: ImageSplits, run_dir: Path, device: torch.device,
                 stop_requested: Callable[[], int | None] | None = None):
        self.cfg, self.settings = cfg, cfg.trainer
        self.device = device
        self.run_dir = Path(run_dir)
        self.dist = Distributed(device)  # torchrun: this rank's share of each batch; rank 0 alone writes
        self.checkpoints = self.dist.checkpoints(self.run_dir)
        self.data = data.to(device)
        self.noise = NOISE.build(cfg.noise)
        self.monitor = monitored_metric(self.settings.get("monitor", "auto"), self.noise)
        self.precision = cfg.device.precision
        self.scaler = grad_scaler(device, self.precision)
        # Shuffling has its own generator so its stream does not depend on anything else.
        self.shuffle_generator = torch.Generator().manual_seed(int(cfg.seed))
        self.epoch, self.global_step = 0, 0  # epochs completed over all stages, optimizer steps
        self.partial_epoch: dict[str, Any] | None = None  # where an interrupted epoch stopped (train_epoch)
        self.interrupts = InterruptWatch(poll=stop_requested, keep_handling=self.dist.active)  # torchrun: 2 signals
        self.metrics: dict[str, Any] = {}  # the latest EpochRecord, as written to metrics.json
        self.run_log = self.dist.run_log(lambda: RunLog(self.run_dir, every_n_steps=self.settings.get("log_every_n_steps"),
                                                        cfg=cfg))  # rank 0's; the other ranks' write nothing
        # ``model`` is the first stage's (``stage_model``); later stages are built on the way.
        self.stages: list[Stage] = plan_stages(cfg)
        self._start_stage(0, model)
        # Fixed validation samples for pictures: the same ones every epoch, so they compare.
        self.fixed_batch = to_float(head(self.data.val_images, self.settings.num_images))
        self.code_batch = to_float(head(self.data.val_images, 512))

    # ---------------------------------------------------------------- stages
    def _start_stage(self, index: int, model: nn.Module) -> None:
        """Make ``model`` the one being trained in stage ``index``, with a fresh optimizer
        and scheduler over its trainable parameters. The best of ``trainer.monitor`` and the
        divergence reference start afresh too: a stage's model (tied, shallower) does not
        compare with another stage's, so ``best.pt`` always holds the current stage's best."""
        stage = self.stages[index]
        self.stage_index = index
        self.stage_epoch = 0  # epochs completed in this stage
        self.stage_stopped = False  # the scheduler ended this stage early
        self.model = model.to(self.device)
        self.optimizer = OPTIMIZERS.build(stage.optimizer, params=[p for p in model.parameters() if p.requires_grad])
        self.scheduler = SCHEDULERS.build(stage.scheduler, optimizer=self.optimizer, epochs=stage.epochs)
        # torch.compile and DDP wrap the same parameters, so checkpoints stay those of self.model.
        self.forward_parts = self.dist.forward_parts(self.model, self.cfg.device.compile)
        self.best_score = math.inf  # best value of self.monitor this stage
        self.best_val_mse = math.inf  # val_mse of that best epoch
        self.best_epoch = 0
        self.reference_loss: float | None = None  # the stage's first batch loss, for divergence checks

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

    state_dict = trainer_state  # (self) -> the checkpoint's dict (aeexp.training.checkpointing)
    load_state_dict = restore_trainer  # (self, state): its inverse

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        """Run every stage from the current one, each until its epochs are done or its
        scheduler says stop; return the final metrics. SIGTERM / SIGINT stop the run at the
        next step with ``last.pt`` saved (TrainingInterrupted); a failure leaves the
        checkpoints as they were and says so in metrics.json."""
        with self.run_log, self.interrupts:
            try:
                model_hooks.initialize_from_data(self.model, self.data.train_images, fresh=self.global_step == 0)
                for index in range(self.stage_index, len(self.stages)):
                    if index != self.stage_index:
                        self._next_stage()
                    while not self._stage_done():
                        self._run_epoch(self.epoch + 1)
                self.metrics["status"] = "completed"
                self.run_log.finish(self.cfg, self.metrics)
            except TrainingInterrupted:
                raise  # metrics.json already says interrupted; last.pt holds the point to resume from
            except BaseException as err:
                self.metrics = self.run_log.failed(err)
                raise
        return self.metrics

    def _run_epoch(self, epoch: int) -> None:
        """Train, validate, step the scheduler, save, log: one epoch."""
        start = time.perf_counter()
        train = self.train_epoch(epoch)
        record, improved, val = self.close_epoch(epoch, train, start, time.perf_counter() - start)
        self.checkpoints.save(self.state_dict(), best=improved, on_best_saved=lambda: self.run_log.best_saved(self.metrics))
        self.run_log.write(self.metrics)
        self.log_epoch(record, improved, val)

    def close_epoch(self, epoch: int, train: dict[str, float], start: float,
                    train_seconds: float) -> tuple[EpochRecord, bool, dict[str, Any]]:
        """After train_epoch (from ``start``): validate, scheduler, best; (record, improved, val)."""
        val = self.validate()
        score = val[self.monitor]
        step_scheduler(self.scheduler, score)
        self.epoch, self.stage_epoch = epoch, self.stage_epoch + 1
        improved = score < self.best_score
        if improved:
            self.best_score, self.best_val_mse, self.best_epoch = score, val["val_mse"], epoch
        lr = self.optimizer.param_groups[0]["lr"]
        self.stage_stopped = self.stage_stopped or should_stop(self.scheduler)
        record = EpochRecord.of(self, train, val, lr, time.perf_counter() - start, train_seconds)
        self.metrics = record.as_dict()
        return record, improved, val

    def log_epoch(self, record: EpochRecord, improved: bool, val: dict[str, Any]) -> None:
        """The epoch's line and scalars; pictures every ``trainer.image_every`` epochs."""
        self.run_log.epoch(record, val["firing_rate"], improved)
        every, epoch = self.settings.image_every, record.epoch
        if every and (epoch % every == 0 or epoch == 1 or self._stage_done()):
            codes = lambda: validation_codes(self.model, self.data.val_images, self.data.val_labels,  # noqa: E731
                                             self.settings.val_batch_size)
            self.run_log.pictures(training_pictures(self.model, self.fixed_batch, self.code_batch, self.noise,
                                                    codes), epoch)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training set in a fresh random order (or the rest of a pass
        that a signal interrupted: same order, same running sums)."""
        self.model.train()
        images, batch_size = self.data.train_images, self.settings.batch_size
        start, sums = 0, torch.zeros(4, dtype=torch.float64, device=self.device)  # loss, mse, penalty, aux
        if self.partial_epoch is not None and self.partial_epoch["epoch"] == epoch:
            self.shuffle_generator.set_state(self.partial_epoch["shuffle"].cpu())
            start, sums = self.partial_epoch["batches_done"], self.partial_epoch["sums"].to(self.device)
        self.partial_epoch = None
        shuffle_state = self.shuffle_generator.get_state()
        order = epoch_order(images, self.shuffle_generator, self.device)  # streamed vectors: a seed
        bar = tqdm(index_batches(images, batch_size, order, start=start), initial=start, leave=False,
                   total=num_batches(len(images), batch_size), dynamic_ncols=True,
                   desc=f"epoch {epoch} (stage {self.stage_index + 1} {self.stage_epoch + 1}/{self.stage.epochs})",
                   disable=None if self.settings.progress and self.dist.is_main else True)
        for step, clean in enumerate(bar, start=start + 1):
            terms = self.train_step(clean)
            self.run_log.step(self.global_step, terms, self.optimizer)  # trainer.log_every_n_steps
            sums += terms.to(torch.float64) * len(clean)
            # Reading the loss forces a device sync, so on a GPU look only every few steps.
            if self.device.type == "cpu" or step % 10 == 0 or self.reference_loss is None:
                self._check_divergence(terms[0].item(), epoch, step)
            if not bar.disable and step % 20 == 0:
                bar.set_postfix(loss=f"{terms[0].item():.5f}", refresh=False)
            if self.dist.stop_requested(self.interrupts, step):  # every rank at the same step
                bar.close()
                self._stop_inside_epoch(epoch, step, shuffle_state, sums)
        bar.close()
        loss_sum, mse_sum, penalty_sum, aux_sum = (sums / len(images)).tolist()
        self._check_divergence(loss_sum, epoch, step)
        return {"loss": loss_sum, "mse": mse_sum, "penalty": penalty_sum, "aux": aux_sum}

    def _stop_inside_epoch(self, epoch: int, step: int, shuffle_state: torch.Tensor, sums: torch.Tensor) -> None:
        """Save where this epoch stands into last.pt, then stop with TrainingInterrupted."""
        self.partial_epoch = {"epoch": epoch, "batches_done": step, "shuffle": shuffle_state, "sums": sums.cpu()}
        self.checkpoints.save_last(self.state_dict())
        signum, name = self.interrupts.signum, signal.Signals(self.interrupts.signum).name
        log.warning("%s received: saved %s after step %d of epoch %d", name, self.checkpoints.path("last"), step, epoch)
        self.metrics["status"] = "interrupted"
        self.run_log.write(self.metrics)
        self.interrupts.pass_on()
        raise TrainingInterrupted(signum, f"interrupted by {name} in epoch {epoch} after step {step}; last.pt holds "
                                          f"that point: continue with trainer.resume=true hydra.run.dir={self.run_dir}")

    def _check_divergence(self, loss: float, epoch: int, step: int) -> None:
        self.reference_loss = loss if self.reference_loss is None else self.reference_loss  # the stage's first batch
        check_divergence(loss, self.reference_loss, self.settings.divergence_factor, f"epoch {epoch} at step "
                         f"{step} of the epoch (global step {self.global_step})", self.optimizer.param_groups[0]["lr"])

    def train_step(self, clean: torch.Tensor) -> torch.Tensor:
        """One optimizer step; returns the detached (loss, mse, penalty, aux) of the whole batch:
        loss = MSE against the clean batch + sparsity penalty + auxiliary loss (zero where none)."""
        inputs = self.noise(clean)  # on the whole batch: every rank draws the same noise
        clean, inputs, weight = self.dist.shard(clean, inputs)  # this rank's rows (all of them alone)
        bottleneck = self.model.bottleneck
        with autocast(self.device, self.precision):
            x_hat, z, code = self.forward_parts(inputs)
            mse = F.mse_loss(x_hat.float(), clean)
            penalty = bottleneck.penalty(z.float())
            aux = bottleneck.auxiliary(code, clean - x_hat.float(), self.model.decode)
            loss = mse + penalty + aux
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss * weight).backward()
        model_hooks.before_optimizer_step(self.model)  # e.g. model=sae: no decoder gradient along its columns
        if self.settings.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        model_hooks.after_optimizer_step(self.model)  # e.g. model=sae: decoder columns back to unit norm
        self.global_step += 1
        return self.dist.batch_terms(torch.stack([loss.detach(), mse.detach(), penalty.detach(), aux.detach()]),
                                     weight, self.interrupts)

    def validate(self) -> dict[str, Any]:
        """Validation figures of the current model (eval mode: lifetime sparsity off)."""
        return validation_figures(self.model, self.data.val_images, self.settings.val_batch_size, self.device,
                                  self.precision, self.noise)
