"""What a sweep (``python train.py -m ...``) needs beyond Hydra's own launchers and sweepers.

A failed job must not stop the others and must not go unnoticed: jobs report failures in
their own ``metrics.json`` (``train.py`` returns NaN to the sweeper instead of raising), and
this Hydra callback lists every job that did not complete once the sweep ends, exiting
non-zero if there was any.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from aeexp.training.files import write_json

log = logging.getLogger(__name__)


def job_dirname(overrides: str, limit: int = 150) -> str:
    """A sweep job's folder name: its overrides (``model.latent_dim=16,sparsity=l1``), with
    path separators replaced, and, past ``limit`` characters (file systems stop at 255), cut
    and ended by a hash of the whole so names stay unique."""
    name = overrides.replace("/", "_") or "no_overrides"
    if len(name) <= limit:
        return name
    return f"{name[: limit - 9]}~{hashlib.sha1(name.encode()).hexdigest()[:8]}"


# Used by conf/config.yaml: hydra.sweep.subdir: ${aeexp_job_dirname:${hydra.job.override_dirname}}
OmegaConf.register_new_resolver("aeexp_job_dirname", job_dirname, replace=True)


def spread_over_gpus(job_num: int) -> None:
    """Parallel sweep jobs on a machine with several GPUs each take one, round-robin,
    unless CUDA_VISIBLE_DEVICES already chose for them."""
    if "CUDA_VISIBLE_DEVICES" not in os.environ and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        torch.cuda.set_device(job_num % torch.cuda.device_count())
        log.info("job %d uses GPU %d", job_num, torch.cuda.current_device())


def record_failure(run_dir: Path, err: Exception) -> None:
    """Mark a job that failed before or during training in its metrics.json."""
    path = run_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        metrics = {}
    if metrics.get("status") != "failed":
        write_json(path, {**metrics, "status": "failed", "error": f"{type(err).__name__}: {err}"})


def sweep_statuses(sweep_dir: Path) -> dict[Path, dict[str, Any]]:
    """metrics.json of every run under a sweep directory, by run directory."""
    statuses = {}
    for run in sorted(p.parent.parent for p in sweep_dir.glob("**/.hydra/config.yaml")):
        path = run / "metrics.json"
        try:
            statuses[run] = json.loads(path.read_text())
        except (OSError, ValueError):
            statuses[run] = {"status": "failed", "error": "no readable metrics.json (the job died before its first epoch)"}
    return statuses


class FailureReport(Callback):
    """Lists the jobs of a sweep that did not complete; exits 1 if there are any."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        statuses = sweep_statuses(sweep_dir)
        failed = {run: m for run, m in statuses.items() if m.get("status") != "completed"}
        log.info("sweep %s: %d of %d runs completed", sweep_dir, len(statuses) - len(failed), len(statuses))
        for run, metrics in failed.items():
            log.error("  %s: %s %s", run.relative_to(sweep_dir), metrics.get("status"), metrics.get("error", ""))
        if failed:
            sys.exit(1)
