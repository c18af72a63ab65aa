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
from aeexp.training.run import run_training

log = logging.getLogger("train")


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    try:
        metrics = run_training(cfg, Path(hydra_cfg.runtime.output_dir))
    except USER_ERRORS as err:
        log.error("%s", err)  # one line on the console and in train.log, no traceback
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise
        sys.exit(2)
    log.info("run directory: %s (status %s, best val_mse %.6f)", hydra_cfg.runtime.output_dir,
             metrics.get("status"), metrics.get("best_val_mse", float("nan")))
    return metrics["best_val_mse"]


if __name__ == "__main__":
    main()
