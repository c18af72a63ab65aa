"""Resuming with settings that differ from the checkpoint's: what may change, what may not.

A resumed run must still be the run it was. Settings that only say how long to train, where
the data lives or how to show progress may change (``trainer.epochs`` is how a run is
extended); a new ``optimizer.lr`` is applied to the restored optimizer and logged. Anything
that changes the model, the data, the objective or the order of batches would make the
checkpoint's run and the resumed one different experiments under one name, so it is refused
with the list of differing keys, before any file is touched.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from aeexp.config import ConfigError, validate
from aeexp.checkpoints import CheckpointError, load_checkpoint

SAFE_TO_CHANGE = (
    "trainer.epochs", "trainer.stages[*].epochs", "trainer.resume", "trainer.resume_from", "trainer.progress",
    "trainer.num_threads", "trainer.image_every", "trainer.num_images", "trainer.val_batch_size",
    "trainer.divergence_factor", "dataset.root", "dataset.download", "device.name", "device.compile", "optimizer.lr",
    "tags", "optimized_metric", "paths.*", "logger.*",
)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": 1, "a.c[0].d": 2}`` from nested dicts and lists."""
    if isinstance(node, dict):
        items = {}
        for key, value in node.items():
            items.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return items or {prefix: {}}
    if isinstance(node, list) and any(isinstance(v, (dict, list)) for v in node):
        items = {}
        for i, value in enumerate(node):
            items.update(flatten(value, f"{prefix}[{i}]"))
        return items or {prefix: []}
    return {prefix: node}


def _safe(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern.replace("[*]", "[[]*[]]")) for pattern in SAFE_TO_CHANGE)


def compare_resume_settings(saved_yaml: str, cfg: DictConfig, source: str) -> dict[str, tuple[Any, Any]]:
    """The settings that differ between the checkpoint's config and ``cfg`` and may change
    ({key: (old, new)}); ConfigError listing the others if there are any."""
    try:
        saved_cfg = OmegaConf.create(saved_yaml)
    except Exception:  # an old or foreign checkpoint without a readable config: nothing to compare
        return {}
    try:
        # Filled from today's schemas, as cfg is: a key added since the checkpoint was written
        # (sparsity.relu, say) then reads as its default there, not as a change.
        saved_cfg = validate(saved_cfg)
    except Exception:  # a config today's schemas refuse: compare it as written
        pass
    saved = flatten(OmegaConf.to_container(saved_cfg, resolve=True))
    current = flatten(OmegaConf.to_container(cfg, resolve=True))
    differing = {k: (saved.get(k, "<absent>"), current.get(k, "<absent>"))
                 for k in sorted(set(saved) | set(current)) if saved.get(k, "<absent>") != current.get(k, "<absent>")}
    refused = {k: v for k, v in differing.items() if not _safe(k)}
    if refused:
        shown = "; ".join(f"{k}: {old!r} in the checkpoint, {new!r} now" for k, (old, new) in list(refused.items())[:6])
        more = f" (and {len(refused) - 6} more)" if len(refused) > 6 else ""
        raise ConfigError("trainer.resume", f"{source} was written with other settings, which a resumed run cannot "
                          f"change: {shown}{more}; resume with the run's own settings (see its .hydra/overrides.yaml), "
                          f"or start a new run in a new hydra.run.dir. What may change on resume: "
                          f"{', '.join(SAFE_TO_CHANGE)}")
    return {k: v for k, v in differing.items() if k not in ("trainer.resume", "trainer.resume_from")}


@dataclass
class ResumeCheckpoint:
    """The checkpoint a resumed run continues from, read and checked before any work."""

    path: Path
    state: dict[str, Any]
    changes: dict[str, tuple[Any, Any]]  # settings that differ from the checkpoint's and may


def read_resume_checkpoint(cfg: DictConfig, run_dir: Path) -> ResumeCheckpoint | None:
    """``checkpoints/<trainer.resume_from>.pt`` of ``run_dir``, checked against ``cfg``
    (None when there is none: :func:`aeexp.training.run_dir.check_run_dir` allowed that).

    Read before the data loads, so a damaged file or settings the run cannot take cost a
    second and one line; a damaged ``last.pt`` points at ``trainer.resume_from=best``.
    """
    source = cfg.trainer.resume_from
    path = Path(run_dir) / "checkpoints" / f"{source}.pt"
    if not path.exists():
        return None
    try:
        state = load_checkpoint(path, map_location="cpu")
    except CheckpointError as err:
        hint = " Continue from the best epoch with trainer.resume_from=best," if source == "last" else ""
        raise CheckpointError(f"{err}.{hint} or start afresh in a new hydra.run.dir.") from None
    return ResumeCheckpoint(path, state, compare_resume_settings(state["config"], cfg, str(path)))
