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
from aeexp.config import ConfigError
from aeexp.sweeps import record_failure, record_refusal, spread_over_gpus, sweep_interrupted
from aeexp.checkpoints import describe_os_error
from aeexp.training import distributed
from aeexp.training.interrupts import TrainingInterrupted
from aeexp.training.run import run_training
from aeexp.training.run_dir import RunDirSnapshot, check_run_dir_argument, write_hydra_files

log = logging.getLogger("train")


def follow_main_rank(run_dir: Path, log_name: str, ranks: distributed.Ranks) -> Path:
    """Under torchrun every rank composed the config, and the default ``hydra.run.dir`` holds
    the time, which ranks started a second apart read differently: all take rank 0's folder.
    A rank other than 0 writes nothing there (its log lines go to the console only, warnings
    and errors), and removes the folder its own Hydra made if it was another, still empty."""
    main_dir = Path(distributed.broadcast_text(str(run_dir)))
    if not ranks.is_main:
        own = RunDirSnapshot(run_dir, log_name)
        if main_dir.resolve() != run_dir.resolve():
            own.restore()
        else:
            own.detach_file_logs()
        logging.getLogger().setLevel(logging.WARNING)
    return main_dir


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    sweep_dir = Path(hydra_cfg.sweep.dir)
    ranks = distributed.start()  # under torchrun: join the other processes of this run
    if distributed.launched():  # (a sweep, -m, was refused in __main__)
        run_dir = follow_main_rank(run_dir, f"{hydra_cfg.job.name}.log", ranks)
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
        if ranks.is_main:
            write_hydra_files(run_dir, cfg, hydra_cfg)

    try:
        metrics = run_training(cfg, run_dir, on_start, lambda: sweep_interrupted(sweep_dir) if multirun else None)
    except TrainingInterrupted as err:
        if ranks.is_main:  # every rank stopped at the same step; rank 0 says so
            log.error("%s", err)
        if multirun:
            return math.nan  # the sweep was marked interrupted: it ends with 128 + the signal
        sys.exit(128 + err.signum)  # the shell's convention for "ended by signal N"
    except USER_ERRORS + (OSError,) as err:
        message = describe_os_error(err) if isinstance(err, OSError) and not isinstance(err, USER_ERRORS) else str(err)
        if not ranks.is_main:
            sys.exit(2)  # the same refusal as rank 0's, which says it and tidies the run directory
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
    except RuntimeError as err:  # under torchrun: another rank died or hung (a collective failed)
        line = distributed.describe_failure(err, ranks)
        if line is None:
            raise
        log.error("%s; continue from the last saved epoch with trainer.resume=true hydra.run.dir=%s", line, run_dir)
        sys.exit(1)
    log.info("run directory: %s (status %s, best %s %.6f)", run_dir, metrics.get("status"),
             metrics.get("monitor", "val_mse"), metrics.get("best_score", float("nan")))
    # What a sweeper minimises: optimized_metric, by default trainer.monitor's best value.
    return float(metrics.get(cfg.get("optimized_metric") or "best_score", math.nan))


if __name__ == "__main__":
    # Mistakes Hydra would report in many lines (or not at all), said in one before it starts.
    preflight(sys.argv[1:], Path(__file__).resolve().parent / "conf")
    try:
        check_run_dir_argument(sys.argv[1:])
        if distributed.launched() and {"-m", "--multirun"} & set(sys.argv[1:]):
            raise ConfigError("-m", "torchrun trains one run: start it once per run, without -m (nothing was changed)")
    except USER_ERRORS as err:
        print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')},000][train][ERROR] - {err}", file=sys.stderr)
        sys.exit(2)
    try:
        main()
    finally:
        distributed.stop()
