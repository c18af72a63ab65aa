"""Evaluate trained runs: ``python evaluate.py run_dir=<run dir or multirun dir>``.

A thin Hydra entry point (config ``conf/eval.yaml``): a run directory gets
``<run>/eval/metrics.json``, figures, a summary table and its figures as columns of the run's
row in TensorBoard's HParams tab (:mod:`aeexp.hparams`); a multirun directory gets every run
evaluated, ``comparison.csv`` / ``comparison.md`` beside its runs and, with ``eval.figures``,
the sweep's pictures (``comparison_*.png`` and ``comparison/`` for TensorBoard;
:mod:`aeexp.evaluation.sweep_pictures`). See README.md.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

import aeexp  # noqa: F401  (registers every built-in component)
from aeexp.cli import USER_ERRORS, preflight
from aeexp.config import ConfigError, DeviceConfig, check_node, check_resolvable
from aeexp.evaluation import (
    RunDirError, check_settings, compare_runs, evaluate_run, find_runs, is_run_dir, markdown_table,
    summary_table, write_comparison,
)
from aeexp.evaluation.sweep_pictures import write_sweep_pictures
from aeexp.device import resolve_device
from aeexp.hparams import write_evaluation_hparams

log = logging.getLogger("evaluate")
ERRORS = USER_ERRORS + (RunDirError,)
CONF_DIR = Path(__file__).resolve().parent / "conf"
TOP_LEVEL_KEYS = ("run_dir", "dataset_root", "eval", "device")


def evaluate(cfg: DictConfig) -> int:
    """Evaluate ``cfg.run_dir``; return the exit status."""
    check_resolvable(cfg)  # a ${...} that does not resolve: one line naming its key
    for key in cfg:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(str(key), f"unknown key; valid keys here: {', '.join(TOP_LEVEL_KEYS)}")
    if OmegaConf.is_missing(cfg, "run_dir"):
        raise ConfigError("run_dir", "missing; usage: python evaluate.py run_dir=<run directory or multirun directory>")
    if not _is_path(cfg.run_dir):
        raise ConfigError("run_dir", f"got {cfg.run_dir!r}, allowed: the path of a run directory or a multirun directory")
    if cfg.get("dataset_root") is not None and not _is_path(cfg.dataset_root):
        raise ConfigError("dataset_root", f"got {cfg.dataset_root!r}, allowed: null (the run's dataset.root) or a folder path")
    settings = check_settings(cfg.eval)
    device = resolve_device(check_node("device", cfg.device, DeviceConfig)["name"])
    root = Path(str(cfg.run_dir))

    def one(run_dir: Path) -> dict:
        metrics = evaluate_run(run_dir, settings, device, cfg.dataset_root)
        write_evaluation_hparams(Path(metrics["run_dir"]), metrics)
        return metrics

    if root.is_dir() and not is_run_dir(root) and find_runs(root):
        columns, rows = compare_runs(root, one, ERRORS)
        csv_path, md_path = write_comparison(root, columns, rows)
        print(markdown_table(columns, rows))
        if settings.figures:
            pictures = write_sweep_pictures(root, columns, rows)
            log.info("sweep pictures: %s (TensorBoard: %s)", ", ".join(p.name for p in pictures) or "none",
                     root / "comparison")
        failed = [r["run"] for r in rows if "error" in r]
        log.info("%d runs compared: %s, %s%s", len(rows), csv_path, md_path,
                 f"; {len(failed)} could not be evaluated: {', '.join(failed)}" if failed else "")
        return 1 if failed else 0
    print(summary_table(one(root)))
    return 0


def _is_path(value) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool) and bool(str(value).strip())


@hydra.main(config_path="conf", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        status = evaluate(cfg)
    except ERRORS as err:
        log.error("%s", err)  # one line, no traceback
        sys.exit(2)
    sys.exit(status)


if __name__ == "__main__":
    preflight(sys.argv[1:], CONF_DIR, config_name="eval", logger=None)  # Hydra's own refusals, in one line
    main()
