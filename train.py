"""Train an autoencoder: ``python train.py [group=option ...] [key=value ...]``.

A thin Hydra entry point: compose the config, hand it to aeexp, report. See README.md.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import aeexp  # noqa: F401  (registers every built-in component)
from aeexp.cli import USER_ERRORS
from aeexp.sweeps import record_failure, spread_over_gpus
from aeexp.training.interrupts import TrainingInterrupted
from aeexp.training.run import run_training

log = logging.getLogger("train")


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        spread_over_gpus(hydra_cfg.job.num)
    try:
        metrics = run_training(cfg, Path(hydra_cfg.runtime.output_dir))
    except TrainingInterrupted as err:
        log.error("%s", err)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # a preempted sweep stops; rerun it with trainer.resume=true
        sys.exit(128 + err.signum)  # the shell's convention for "ended by signal N"
    except USER_ERRORS as err:
        log.error("%s", err)  # one line on the console and in train.log, no traceback
        if hydra_cfg.mode == RunMode.MULTIRUN:
            record_failure(Path(hydra_cfg.runtime.output_dir), err)
            return float("nan")  # the other jobs go on; aeexp.sweeps.FailureReport lists this one
        sys.exit(2)
    log.info("run directory: %s (status %s, best %s %.6f)", hydra_cfg.runtime.output_dir,
             metrics.get("status"), metrics.get("monitor", "val_mse"), metrics.get("best_score", float("nan")))
    return metrics["best_score"]  # what a sweeper minimises: trainer.monitor's best value


if __name__ == "__main__":
    main()
