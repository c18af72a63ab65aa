"""From a run directory back to the trained model and the data it was trained on.

The checkpoint is the source of truth: it holds the weights and, as YAML text, the
composed config that built them, so the model is rebuilt through the registry exactly as
training built it (``validate`` + ``build_model``) and the weights must fit it. Everything
is checked before anything is written, so a bad run directory fails in one line and leaves
the directory as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from aeexp.config import validate
from aeexp.registry import DATASETS
from aeexp.checkpoints import CheckpointError, load_checkpoint
from aeexp.models.factory import build_model

CHECKPOINT = Path("checkpoints") / "best.pt"


class RunDirError(FileNotFoundError):
    """A path that is not a run directory (or a multirun directory holding runs)."""


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: DictConfig
    model: torch.nn.Module
    epoch: int


@dataclass
class EvalData:
    """uint8 images (N, C, H, W) and labels of the three splits; the notes say how the
    validation and test splits were made. Training used train and validation only."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    val_note: str
    test_note: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]


def is_run_dir(path: Path) -> bool:
    return (path / "checkpoints").is_dir() or (path / ".hydra" / "config.yaml").is_file()


def find_runs(root: Path) -> list[Path]:
    """Run directories at any depth below ``root`` (each Hydra job has ``.hydra/overrides.yaml``)."""
    return sorted(p.parent.parent for p in root.rglob(".hydra/overrides.yaml") if p.parent.parent != root)


def check_run_dir(run_dir: Path) -> Path:
    """``run_dir/checkpoints/best.pt``, or RunDirError saying what is missing."""
    if not run_dir.exists():
        raise RunDirError(f"run_dir {run_dir}: no such directory")
    if not run_dir.is_dir():
        raise RunDirError(f"run_dir {run_dir}: not a directory")
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise RunDirError(
            f"run_dir {run_dir}: no {CHECKPOINT} (a run that finished at least one epoch has one; "
            "a multirun directory holds runs in subfolders with .hydra/overrides.yaml)"
        )
    return path


def load_run(run_dir: Path | str, device: torch.device | str = "cpu", dataset_root: str | None = None,
             trust_targets: bool = False) -> LoadedRun:
    """Rebuild the run's model from its checkpoint's config and load ``best.pt`` into it.

    ``dataset_root`` replaces the run's ``dataset.root`` (a relative root was relative to
    where training was launched). The stored config is data from whoever wrote the file:
    before anything is built from it (data included) it is settled and checked by
    :mod:`aeexp.trust`, and a ``_target_`` in it is refused unless ``trust_targets``
    (``eval.trust_targets=true``), which logs each target before it is built.
    """
    run_dir = Path(run_dir)
    path = check_run_dir(run_dir)
    state = load_checkpoint(path, map_location="cpu")  # weights_only=True: loading runs no code
    from aeexp.trust import read_loaded_config

    raw = read_loaded_config(state["config"], path, trust=trust_targets)  # no _target_ unless trusted
    cfg = validate(raw)  # ConfigError names e.g. an unregistered model.name
    if dataset_root is not None and "root" in cfg.dataset:
        cfg.dataset.root = str(dataset_root)
    model = build_model(cfg, load_data(cfg).shape)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(
            f"{path}: the weights do not fit the model its config describes ({str(err).strip().splitlines()[0]})"
        ) from None
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedRun(run_dir, cfg, model, int(state.get("epoch", 0)))


_DATA: dict[str, EvalData] = {}


def load_data(cfg: DictConfig) -> EvalData:
    """The run's three splits, on the CPU: training images for PCA, probes and kNN, the
    validation split that selected ``best.pt``, and the test split that nothing selected on.
    Loaded sets are kept for the process, so a sweep reads each dataset once."""
    key = OmegaConf.to_yaml(cfg.dataset)
    if key in _DATA:
        return _DATA[key]
    splits = DATASETS.build(cfg.dataset)
    if not all(isinstance(t, torch.Tensor) for t in (splits.train_images, splits.val_images, splits.test_images)):
        raise RunDirError(
            "evaluation keeps the images in memory, but this run streamed them from disk "
            "(dataset.in_memory=false, or larger than dataset.memory_limit_mb)"
        )
    data = EvalData(splits.train_images.cpu(), splits.train_labels.cpu().long(),
                    splits.val_images.cpu(), splits.val_labels.cpu().long(),
                    splits.test_images.cpu(), splits.test_labels.cpu().long(), splits.val_note, splits.test_note)
    _DATA[key] = data
    return data
