"""``python train.py -m hydra/launcher=stacked ...``: a Hydra launcher that trains the jobs
which can share a process as stacked groups and runs the others one by one, as Hydra's
basic launcher does.

Each job is composed as the basic launcher composes it (``load_sweep_config``, job number,
``hydra.sweep.subdir`` for its folder) and gets a :class:`~hydra.core.utils.JobReturn`
like any other launcher's, so sweepers and :class:`aeexp.sweeps.FailureReport` see no
difference. A stacked member does what ``train.py`` does for a job (refusals recorded in the
sweep folder, ``.hydra/`` written once accepted, failures in ``metrics.json``, NaN returned
for a failed job) and writes the files a lone run writes, log file included.

Hydra instantiates launchers only from the ``hydra_plugins`` package, so the class Hydra
sees is ``hydra_plugins.aeexp_stacked.stacked_launcher.StackedLauncher``
(``conf/hydra/launcher/stacked.yaml`` names it), which hands the sweep to this one.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobRuntime, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from aeexp.checkpoints import describe_os_error
from aeexp.cli import USER_ERRORS
from aeexp.launchers import SweepLauncher
from aeexp.stacked.grouping import plan_groups
from aeexp.stacked.members import DataCache, Member, prepare_member
from aeexp.stacked.training import StackedTraining
from aeexp.sweeps import record_failure, record_refusal, sweep_interrupted
from aeexp.training.interrupts import TrainingInterrupted
from aeexp.training.run_dir import RunDirSnapshot, write_hydra_files

log = logging.getLogger(__name__)
DEFAULT_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


@dataclass
class Job:
    """One job of the sweep as a stacked member sees it: the composed config and what a
    lone job's ``train.py`` would hold."""

    position: int
    config: DictConfig  # hydra node included
    ret: JobReturn
    run_dir: Path
    snapshot: RunDirSnapshot | None = None
    handler: logging.Handler | None = None
    member: Member | None = None


class StackedLauncher(SweepLauncher):
    def __init__(self, max_members: int = 32) -> None:
        super().__init__()
        self.max_members = int(max_members)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info("Launching %d jobs locally, stacked where they can be", len(job_overrides))
        configs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            configs.append(sweep_config)
        plan = plan_groups([_task_config(c) for c in configs], self.max_members)
        returns: dict[int, JobReturn] = {}
        for group in plan.groups:
            log.info("stacked: jobs %s train together", ", ".join(f"#{initial_job_idx + p}" for p in group))
            returns.update(self._run_group([configs[p] for p in group], group))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        for position, reason in sorted(plan.alone.items()):
            log.info("stacked: job #%d runs alone: %s", initial_job_idx + position, reason)
            returns[position] = run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                                        config=configs[position], job_dir_key="hydra.sweep.dir",
                                        job_subdir_key="hydra.sweep.subdir")
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return [returns[p] for p in range(len(configs))]

    # ------------------------------------------------------------ one group
    def _run_group(self, configs: list[DictConfig], positions: list[int]) -> dict[int, JobReturn]:
        """Set up every job as ``train.py`` would (refused ones end there), train the
        accepted ones stacked, then close each job as Hydra's ``run_job`` closes it."""
        original = HydraConfig.instance().cfg
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        callbacks = self.hydra_context.callbacks
        jobs = [self._open_job(config, position) for config, position in zip(configs, positions)]
        configure_log(jobs[0].config.hydra.job_logging, jobs[0].config.hydra.verbose)
        _detach_file_handlers()  # each member logs into its own file, only while it is the one working
        data = DataCache()
        for job in jobs:
            HydraConfig.instance().set_config(job.config)
            callbacks.on_job_start(config=job.config, task_function=self.task_function)
            self._prepare(job, data, sweep_dir)
        members = [job for job in jobs if job.member is not None]
        if members:
            StackedTraining([job.member for job in members], lambda: sweep_interrupted(sweep_dir)).fit()
        for job in members:
            self._close(job)
        for job in jobs:
            HydraConfig.instance().set_config(job.config)
            callbacks.on_job_end(config=job.config, job_return=job.ret)
            if job.handler is not None:
                job.handler.close()
        HydraConfig.instance().cfg = original
        return {job.position: job.ret for job in jobs}

    def _open_job(self, config: DictConfig, position: int) -> Job:
        """What Hydra's run_job does before calling the task function (no chdir: Hydra 1.2+)."""
        HydraConfig.instance().set_config(config)
        output_dir = os.path.join(str(OmegaConf.select(config, "hydra.sweep.dir")),
                                  str(OmegaConf.select(config, "hydra.sweep.subdir")))
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = os.path.abspath(output_dir)
        HydraConfig.instance().set_config(config)
        ret = JobReturn()
        ret.cfg = _task_config(config)
        ret.hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
        ret.overrides = OmegaConf.to_container(config.hydra.overrides.task)
        ret.working_dir = os.getcwd()
        ret.task_name = JobRuntime.instance().get("name")
        run_dir = Path(config.hydra.runtime.output_dir)
        snapshot = RunDirSnapshot(run_dir, f"{config.hydra.job.name}.log")
        run_dir.mkdir(parents=True, exist_ok=True)
        return Job(position, config, ret, run_dir, snapshot, _file_handler(config, run_dir))

    def _prepare(self, job: Job, data: DataCache, sweep_dir: Path) -> None:
        """train.py's part before training: a sweep already interrupted, a refusal, a run
        finished earlier (skipped), or an accepted member."""
        root = logging.getLogger()
        root.addHandler(job.handler)
        started = False

        def on_start() -> None:
            nonlocal started
            started = True
            write_hydra_files(job.run_dir, job.ret.cfg, HydraConfig.get())

        try:
            if sweep_interrupted(sweep_dir):
                root.removeHandler(job.handler)
                job.snapshot.restore()
                log.warning("%s: not started, the sweep was interrupted", job.run_dir.name)
                _returns(job, math.nan)
                return
            prepared = prepare_member(job.ret.cfg, job.run_dir, data, on_start, lambda: sweep_interrupted(sweep_dir))
        except USER_ERRORS + (OSError,) as err:
            message = describe_os_error(err) if isinstance(err, OSError) and not isinstance(err, USER_ERRORS) else str(err)
            if not started:
                root.removeHandler(job.handler)
                job.handler.close()
            log.error("%s", message)
            if started:
                record_failure(job.run_dir, err)
            else:
                job.snapshot.restore()
                record_refusal(sweep_dir, job.run_dir, message)
            _returns(job, math.nan)
            return
        except Exception as err:  # noqa: BLE001  (as run_job: the job fails, the sweep goes on)
            job.ret.return_value, job.ret.status = err, JobStatus.FAILED
            return
        finally:
            root.removeHandler(job.handler)
        if isinstance(prepared, dict):  # completed earlier (trainer.resume=true)
            _returns(job, _optimized(job.ret.cfg, prepared))
            return
        prepared.hydra_config, prepared.log_handler = job.config, job.handler
        job.member = prepared

    def _close(self, job: Job) -> None:
        """train.py's part after training: the outcome as the job's return value."""
        outcome = job.member.outcome
        with job.member.scope():
            if isinstance(outcome, dict):
                log.info("run directory: %s (status %s, best %s %.6f)", job.run_dir, outcome.get("status"),
                         outcome.get("monitor", "val_mse"), outcome.get("best_score", float("nan")))
                _returns(job, _optimized(job.ret.cfg, outcome))
            elif isinstance(outcome, TrainingInterrupted):
                log.error("%s", outcome)
                _returns(job, math.nan)
            elif isinstance(outcome, USER_ERRORS + (OSError,)):
                record_failure(job.run_dir, outcome)
                _returns(job, math.nan)
            else:
                job.ret.return_value, job.ret.status = outcome, JobStatus.FAILED


def _task_config(config: DictConfig) -> DictConfig:
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def _optimized(cfg: DictConfig, metrics: dict[str, Any]) -> float:
    """What train.py returns to a sweeper."""
    return float(metrics.get(cfg.get("optimized_metric") or "best_score", math.nan))


def _returns(job: Job, value: float) -> None:
    job.ret.return_value, job.ret.status = value, JobStatus.COMPLETED


def _file_handler(config: DictConfig, run_dir: Path) -> logging.Handler:
    """The job's own ``<job name>.log``, formatted as Hydra's job logging formats it."""
    name = OmegaConf.select(config, "hydra.job_logging.handlers.file.formatter") or "simple"
    fmt = OmegaConf.select(config, f"hydra.job_logging.formatters.{name}.format") or DEFAULT_FORMAT
    handler = logging.FileHandler(run_dir / f"{config.hydra.job.name}.log", delay=True)
    handler.setFormatter(logging.Formatter(fmt))
    handler.setLevel(logging.DEBUG if config.hydra.verbose is True else logging.INFO)
    return handler


def _detach_file_handlers() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
