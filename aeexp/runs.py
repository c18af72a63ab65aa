"""A trained run, back from its directory: ``aeexp.load_run(run_dir)``.

The checkpoint is the source of truth: it holds the weights, the input shape and, as YAML
text, the composed config that built them, so the model is rebuilt through the registry
exactly as training built it (``validate`` + ``build_model``), without touching the data,
and the weights must fit it. The stored config is data from whoever wrote the file: a
``_target_`` in it is refused unless ``trust_targets`` (:mod:`aeexp.trust`). Everything is
checked before anything is written, so a bad run directory fails in one line.

    import aeexp
    run = aeexp.load_run("outputs/2026-11-22/10-00-00")        # best.pt, on the CPU
    z = run.model.encode(x)                                   # x: (N, C, H, W) floats in [0, 1]
    x_hat = run.model.decode(z); x_hat, z = run.model(x)
    run.cfg.model.latent_dim, run.metrics["best_val_mse"], run.input_shape
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from aeexp.checkpoints import CheckpointError, load_checkpoint
from aeexp.config import validate
from aeexp.models.factory import build_model


class RunDirError(FileNotFoundError):
    """A path that is not a run directory (or a multirun directory holding runs)."""


@dataclass
class LoadedRun:
    """A trained run: its model (eval mode, frozen, on the device asked for), the validated
    config that built it, the checkpoint's epoch, the input shape (C, H, W) and the
    training's final ``metrics.json`` (empty if the file is gone)."""

    run_dir: Path
    cfg: DictConfig
    model: torch.nn.Module
    epoch: int
    input_shape: tuple[int, ...] = ()
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None


def is_run_dir(path: Path) -> bool:
    return (path / "checkpoints").is_dir() or (path / ".hydra" / "config.yaml").is_file()


def find_runs(root: Path) -> list[Path]:
    """Run directories at any depth below ``root`` (each Hydra job has ``.hydra/overrides.yaml``)."""
    return sorted(p.parent.parent for p in root.rglob(".hydra/overrides.yaml") if p.parent.parent != root)


def checkpoint_path(run_dir: Path, which: str = "best") -> Path:
    """``run_dir/checkpoints/<which>.pt``, or RunDirError saying what is missing."""
    if which not in ("best", "last"):
        raise RunDirError(f"which: got {which!r}, allowed: best, last")
    if not run_dir.exists():
        raise RunDirError(f"run_dir {run_dir}: no such directory")
    if not run_dir.is_dir():
        raise RunDirError(f"run_dir {run_dir}: not a directory")
    path = run_dir / "checkpoints" / f"{which}.pt"
    if not path.is_file():
        raise RunDirError(
            f"run_dir {run_dir}: no checkpoints/{which}.pt (a run that finished at least one epoch has one; "
            "a multirun directory holds runs in subfolders with .hydra/overrides.yaml)"
        )
    return path


def load_run(run_dir: Path | str, which: str = "best", device: torch.device | str = "cpu",
             dataset_root: str | None = None, trust_targets: bool = False) -> LoadedRun:
    """Rebuild the run's model from its checkpoint's config and load ``<which>.pt`` into it
    (``best``: the epoch validation chose; ``last``: the latest).

    ``dataset_root`` replaces the run's ``dataset.root`` (a relative root was relative to
    where training was launched). The stored config is data from whoever wrote the file:
    before anything is built from it (data included) it is settled and checked by
    :mod:`aeexp.trust`, and a ``_target_`` in it is refused unless ``trust_targets``
    (``eval.trust_targets=true``), which logs each target before it is built.
    """
    run_dir = Path(run_dir)
    path = checkpoint_path(run_dir, which)
    state = load_checkpoint(path, map_location="cpu")  # weights_only=True: loading runs no code
    from aeexp.trust import read_loaded_config

    raw = read_loaded_config(state["config"], path, trust=trust_targets)  # no _target_ unless trusted
    cfg = validate(raw, trackers_installed=False)  # ConfigError names e.g. an unregistered model.name
    if dataset_root is not None and "root" in cfg.dataset:
        cfg.dataset.root = str(dataset_root)
    input_shape = tuple(state.get("input_shape") or ())
    if not input_shape:  # a checkpoint from before input shapes were stored: ask the data
        from aeexp.registry import DATASETS

        input_shape = tuple(DATASETS.build(cfg.dataset).shape)
    model = build_model(cfg, input_shape)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(
            f"{path}: the weights do not fit the model its config describes ({str(err).strip().splitlines()[0]})"
        ) from None
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        metrics = {}
    return LoadedRun(run_dir, cfg, model, int(state.get("epoch", 0)), input_shape, metrics, path)
