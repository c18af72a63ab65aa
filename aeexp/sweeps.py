"""What a sweep (``python train.py -m ...``) needs beyond Hydra's own launchers and sweepers.

A failed job must not stop the others and must not go unnoticed: jobs report failures in
their own ``metrics.json`` (``train.py`` returns NaN to the sweeper instead of raising), a
job refused before training (say, a rerun over finished jobs without ``trainer.resume``)
records that in the sweep folder, never in the job's own files, and this Hydra callback
lists every job that did not complete once the sweep ends, exiting non-zero if there was
any.

Signals end a sweep the way schedulers expect, with every launcher: SIGTERM or SIGINT to
the sweep's process marks the sweep folder interrupted; the running jobs (in this process,
or in the launcher's workers, which poll the mark) save their place in ``last.pt`` and
stop, no further job starts, and the sweep exits with 128 + the signal number.
``trainer.resume=true`` then finishes it.

A SLURM launcher on a machine without SLURM's commands is refused in one line when the
sweep starts, before anything is written (submitit would fail with a traceback).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from aeexp.checkpoints import write_json
from aeexp.config import ConfigError
from aeexp.training.interrupts import SIGNALS

log = logging.getLogger(__name__)


def job_dirname(overrides: str, num: int | str | None = None, limit: int = 150) -> str:
    """A sweep job's folder name: its job number and its overrides
    (``3-model.latent_dim=16,sparsity=l1``), with path separators replaced, and, past
    ``limit`` characters (file systems stop at 255), cut and ended by a hash of the whole.
    The number keeps two jobs apart whose overrides differ only in keys left out of the
    name (``dataset.root``, ``trainer.resume``); the same sweep command numbers its jobs
    the same way, so a rerun finds each job's folder again."""
    name = overrides.replace("/", "_") or "no_overrides"
    if num is not None:
        name = f"{num}-{name}"
    if len(name) <= limit:
        return name
    return f"{name[: limit - 9]}~{hashlib.sha1(name.encode()).hexdigest()[:8]}"


# Used by conf/config.yaml: hydra.sweep.subdir: ${aeexp_job_dirname:${hydra.job.override_dirname},${hydra.job.num}}
OmegaConf.register_new_resolver("aeexp_job_dirname", job_dirname, replace=True)


def spread_over_gpus(job_num: int) -> None:
    """Parallel sweep jobs on a machine with several GPUs each take one, round-robin,
    unless CUDA_VISIBLE_DEVICES already chose for them."""
    if "CUDA_VISIBLE_DEVICES" not in os.environ and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        torch.cuda.set_device(job_num % torch.cuda.device_count())
        log.info("job %d uses GPU %d", job_num, torch.cuda.current_device())


def record_failure(run_dir: Path, err: Exception) -> None:
    """Mark a job that failed during training in its metrics.json (one that completed is
    never marked: nothing that happens afterwards makes a finished run fail)."""
    path = run_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        metrics = {}
    if metrics.get("status") not in ("failed", "completed"):
        write_json(path, {**metrics, "status": "failed", "error": f"{type(err).__name__}: {err}"})


# Files of the sweep folder itself (not of any job): refusals, and the mark of a signal.
REFUSED = ".aeexp-refused.jsonl"
INTERRUPTED = ".aeexp-interrupted"


def record_refusal(sweep_dir: Path, run_dir: Path, message: str, kind: str = "refused") -> None:
    """Note in the sweep folder that a job was refused before training (its own folder is
    left as it was, or removed when this command made it), or, ``kind="lost"``, that the
    launcher lost it (a Ray worker that died): it may have left no folder to report from."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"run": str(run_dir), "kind": kind, "error": message}) + "\n"
    with open(sweep_dir / REFUSED, "a") as handle:  # one short append per job: safe across processes
        handle.write(line)


def read_refusals(sweep_dir: Path) -> dict[Path, str]:
    """What :func:`record_refusal` noted, by run directory: ``"<kind>: <message>"``."""
    try:
        lines = (sweep_dir / REFUSED).read_text().splitlines()
    except OSError:
        return {}
    records = (json.loads(line) for line in lines if line.strip())
    return {Path(r["run"]): f"{r.get('kind', 'refused')}: {r['error']}" for r in records}


def mark_interrupted(sweep_dir: Path, signum: int) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / INTERRUPTED).write_text(str(signum))


def sweep_interrupted(sweep_dir: Path) -> int | None:
    """The signal that ended the sweep in ``sweep_dir``, if one did (jobs poll this)."""
    try:
        return int((sweep_dir / INTERRUPTED).read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


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


SLURM_COMMANDS = ("sbatch", "srun")
"""What submitit's SLURM launcher runs: without them it fails with a traceback after composing."""


def check_launcher_available(config: DictConfig) -> None:
    """Refuse a SLURM launcher (``hydra/launcher=submitit_slurm``, or a config built on it)
    where SLURM's commands are not on the PATH, as a ConfigError naming the ways to run."""
    target = str(OmegaConf.select(config, "hydra.launcher._target_", default="") or "")
    if not target.endswith("submitit_launcher.SlurmLauncher"):
        return
    missing = [command for command in SLURM_COMMANDS if shutil.which(command) is None]
    if missing:
        choice = OmegaConf.select(config, "hydra.runtime.choices", default={}).get("hydra/launcher", "submitit_slurm")
        raise ConfigError("hydra/launcher", f"got {choice!r}, but SLURM's {' and '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not on this machine's PATH; run this command on "
                          "the cluster's login node, or here with hydra/launcher=submitit_local, joblib or ray")


class FailureReport(Callback):
    """Lists the jobs of a sweep that did not complete (exit 1), and turns SIGTERM / SIGINT
    into a clean end of the sweep (exit 128 + signal)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.sweep_dir: Path | None = None
        self._previous: dict[int, Any] = {}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_launcher_available(config)
        except ConfigError as err:
            log.error("%s", err)  # one line, before anything is written
            sys.exit(2)
        self.sweep_dir = Path(config.hydra.sweep.dir)
        for name in (REFUSED, INTERRUPTED):  # a rerun starts with a clean slate
            (self.sweep_dir / name).unlink(missing_ok=True)
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # a second signal: stop at once, as without aeexp
            for s, handler in self._previous.items():
                signal.signal(s, handler)
            signal.raise_signal(signum)
            return
        self.signum = signum
        if self.sweep_dir is not None:
            mark_interrupted(self.sweep_dir, signum)
        log.warning("%s received: the running job(s) save their place, no further job starts",
                    signal.Signals(signum).name)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        sweep_dir = Path(config.hydra.sweep.dir)
        signum = self.signum or sweep_interrupted(sweep_dir)
        refused = read_refusals(sweep_dir)
        statuses = {run: m for run, m in sweep_statuses(sweep_dir).items() if run not in refused}
        failed = {run: m for run, m in statuses.items() if m.get("status") != "completed"}
        total = len(statuses) + len(refused)
        log.info("sweep %s: %d of %d runs completed", sweep_dir, total - len(failed) - len(refused), total)
        for run, metrics in failed.items():
            log.error("  %s: %s %s", run.relative_to(sweep_dir), metrics.get("status"), metrics.get("error", ""))
        for run, message in refused.items():
            log.error("  %s: %s", run.relative_to(sweep_dir) if run.is_relative_to(sweep_dir) else run, message)
        for name in (REFUSED, INTERRUPTED):
            (sweep_dir / name).unlink(missing_ok=True)
        if signum:
            log.error("sweep interrupted by %s: continue it with the same command and trainer.resume=true "
                      "hydra.sweep.dir=%s", signal.Signals(signum).name, sweep_dir)
            sys.exit(128 + signum)
        if failed or refused:
            sys.exit(1)
