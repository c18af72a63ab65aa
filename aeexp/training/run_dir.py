"""A run directory's safety: what counts as an existing run, when a command may write into
one, and how a command refused before training leaves it exactly as it was.

A directory holding any result of a run (a checkpoint, ``metrics.json``, TensorBoard
events) is never written over without ``trainer.resume=true``, and a resume needs a
checkpoint to continue from: starting over silently would replace finished work. Hydra
creates the run directory and opens ``train.log`` before aeexp sees the config, so a
command refused before training undoes that (:class:`RunDirSnapshot`), and ``.hydra/``
is written by :func:`write_hydra_files` only once the run is accepted (``conf/config.yaml``
sets ``hydra.output_subdir: null``).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from aeexp.config import ConfigError
from aeexp.checkpoints import write_text

RESULT_FILES = ("checkpoints/last.pt", "checkpoints/best.pt", "metrics.json")


def existing_results(run_dir: Path) -> list[str]:
    """The results of an earlier run found in ``run_dir`` (empty for a new directory)."""
    found = [name for name in RESULT_FILES if (run_dir / name).exists()]
    if run_dir.is_dir() and any(run_dir.glob("events.out.tfevents.*")):
        found.append("TensorBoard events")
    return found


def check_run_dir(run_dir: Path, resume: bool, resume_from: str) -> None:
    """Refuse (ConfigError) a command that would write over an earlier run's results, or
    resume from a checkpoint that is not there while results are; before any work."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError("hydra.run.dir", f"{run_dir} is a file, not a directory; choose another hydra.run.dir")
    results = existing_results(run_dir)
    if not resume:
        if results:
            raise ConfigError("trainer.resume", f"got False, but {run_dir} already holds a run ({', '.join(results)}); "
                              "pass trainer.resume=true to continue it, or choose a new hydra.run.dir "
                              "(nothing was changed)")
        return
    source = run_dir / "checkpoints" / f"{resume_from}.pt"
    if source.exists():
        return
    if resume_from == "best":
        raise ConfigError("trainer.resume_from", f"got 'best', but {source} does not exist (nothing was changed)")
    if results:
        raise ConfigError("trainer.resume", f"got True, but {source} does not exist while {run_dir} holds results "
                          f"({', '.join(results)}): there is nothing to continue from, and starting over would "
                          "replace them; choose a new hydra.run.dir (nothing was changed)")


class RunDirSnapshot:
    """What a command found in its run directory when it started, so that a command refused
    before training can leave the directory as it was: ``train.log`` back to its length (or
    gone), and a directory that held nothing else removed."""

    def __init__(self, run_dir: Path, log_name: str = "train.log"):
        self.run_dir = Path(run_dir)
        self.log_path = self.run_dir / log_name
        self.log_size = self.log_path.stat().st_size if self.log_path.is_file() else None
        self.entries = set(os.listdir(self.run_dir)) if self.run_dir.is_dir() else None

    def detach_file_logs(self) -> None:
        """Stop logging into the run directory, so the refusal itself goes to the console only."""
        for logger in (logging.getLogger(), *(logging.getLogger(n) for n in logging.root.manager.loggerDict)):
            for handler in list(getattr(logger, "handlers", [])):
                path = getattr(handler, "baseFilename", None)
                if path and Path(path).resolve().parent == self.run_dir.resolve():
                    handler.close()
                    logger.removeHandler(handler)

    def restore(self) -> None:
        """Undo what this command wrote: log lines, new entries (a refused command created
        no results), and the directory itself when it held nothing but an empty log."""
        self.detach_file_logs()
        if not self.run_dir.is_dir():
            return
        if self.log_size is not None and self.log_path.is_file():
            os.truncate(self.log_path, self.log_size)
        for name in set(os.listdir(self.run_dir)) - (self.entries or set()):
            path = self.run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        left = set(os.listdir(self.run_dir))
        if left <= {self.log_path.name} and (not self.log_path.exists() or self.log_path.stat().st_size == 0):
            shutil.rmtree(self.run_dir, ignore_errors=True)


def write_hydra_files(run_dir: Path, task_cfg: DictConfig, hydra_cfg: Any) -> None:
    """``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` as Hydra writes them, but
    only for an accepted run: written earlier, a refused command would replace an existing
    run's record of how it was made."""
    folder = Path(run_dir) / ".hydra"
    write_text(folder / "config.yaml", OmegaConf.to_yaml(task_cfg))
    write_text(folder / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})))
    write_text(folder / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(hydra_cfg.overrides.task))))


def check_run_dir_argument(argv: list[str]) -> None:
    """Refuse (ConfigError) a ``hydra.run.dir`` / ``hydra.sweep.dir`` on the command line that
    names an existing file: Hydra would fail creating the folder with a stack trace."""
    for arg in argv:
        key, _, value = arg.lstrip("+").partition("=")
        if key not in ("hydra.run.dir", "hydra.sweep.dir") or not value or "${" in value:
            continue
        path = Path(value)
        if path.exists() and not path.is_dir():
            raise ConfigError(key, f"{value} is a file, not a directory; choose another {key} (nothing was changed)")
        if not path.exists():  # can it be made? (Hydra would fail with a stack trace) Try, then undo.
            missing = [p for p in (path, *path.parents) if not p.exists()]
            try:
                path.mkdir(parents=True)
            except OSError as err:
                raise ConfigError(key, f"{value} cannot be created ({err.strerror or err}); choose a folder you "
                                  "may write to (nothing was changed)") from None
            for folder in missing:  # deepest first
                folder.rmdir()
