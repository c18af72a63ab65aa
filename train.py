"""Train an autoencoder: ``python train.py [group=option ...] [key=value ...]``.

A thin Hydra entry point: compose the config, hand it to aeexp, report. See README.md.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import aeexp  # noqa: F401  (registers every built-in component)
from aeexp.cli import USER_ERRORS, preflight
from aeexp.sweeps import record_failure, record_refusal, spread_over_gpus, sweep_interrupted
from aeexp.checkpoints import describe_os_error
from aeexp.training.interrupts import TrainingInterrupted
from aeexp.training.run import run_training
from aeexp.training.run_dir import RunDirSnapshot, check_run_dir_argument, write_hydra_files

log = logging.getLogger("train")


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    sweep_dir = Path(hydra_cfg.sweep.dir)
    snapshot = RunDirSnapshot(run_dir, f"{hydra_cfg.job.name}.log")
    if multirun:
        signum = sweep_interrupted(sweep_dir)
        if signum:  # a signal ended the sweep: this job does not start
            snapshot.restore()
            log.warning("%s: not started, the sweep was interrupted", run_dir.name)
            return math.nan
        spread_over_gpus(hydra_cfg.job.num)
    started = False

    def on_start() -> None:  # every check passed: the run is accepted
        nonlocal started
        started = True
        write_hydra_files(run_dir, cfg, hydra_cfg)

    try:
        metrics = run_training(cfg, run_dir, on_start, lambda: sweep_interrupted(sweep_dir) if multirun else None)
    except TrainingInterrupted as err:
        log.error("%s", err)
        if multirun:
            return math.nan  # the sweep was marked interrupted: it ends with 128 + the signal
        sys.exit(128 + err.signum)  # the shell's convention for "ended by signal N"
    except USER_ERRORS + (OSError,) as err:
        message = describe_os_error(err) if isinstance(err, OSError) and not isinstance(err, USER_ERRORS) else str(err)
        if not started:
            snapshot.detach_file_logs()  # the refusal goes to the console, not into the run's log
        log.error("%s", message)  # one line, no traceback
        if not started:
            snapshot.restore()  # refused before training: the run directory is left as it was
        if multirun:
            if started:
                record_failure(run_dir, err)
            else:
                record_refusal(sweep_dir, run_dir, message)
            return math.nan  # the other jobs go on; aeexp.sweeps.FailureReport lists this one
        sys.exit(2)
    log.info("run directory: %s (status %s, best %s %.6f)", run_dir, metrics.get("status"),
             metrics.get("monitor", "val_mse"), metrics.get("best_score", float("nan")))
    # What a sweeper minimises: optimized_metric, by default trainer.monitor's best value.
    return float(metrics.get(cfg.get("optimized_metric") or "best_score", math.nan))


if __name__ == "__main__":
    # Mistakes Hydra would report in many lines (or not at all), said in one before it starts.
    preflight(sys.argv[1:], Path(__file__).resolve().parent / "conf")
    try:
        check_run_dir_argument(sys.argv[1:])
    except USER_ERRORS as err:
        print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')},000][train][ERROR] - {err}", file=sys.stderr)
        sys.exit(2)
    main()
