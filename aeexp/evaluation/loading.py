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
from aeexp.data.datasets import TORCHVISION_CLASSES, load_test_split
from aeexp.registry import DATASETS
from aeexp.training.files import CheckpointError, load_checkpoint
from aeexp.training.run import build_model

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
    """uint8 images (N, C, H, W) and labels; ``test_note`` says what "test" is."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
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
    """Training images (for PCA, probes, kNN) and the test split.

    Torchvision sets: the official test split (the validation split when
    ``dataset.val_fraction`` is 0, read again from disk otherwise). Synthetic and
    image-folder sets have no test split of their own: their validation split is the test
    split. Loaded sets are kept for the process, so a sweep reads each dataset once.
    """
    key = OmegaConf.to_yaml(cfg.dataset)
    if key in _DATA:
        return _DATA[key]
    splits = DATASETS.build(cfg.dataset)
    name = cfg.dataset.get("name")
    if name in TORCHVISION_CLASSES:
        if cfg.dataset.val_fraction > 0:
            test_images, test_labels = load_test_split(name, cfg.dataset.root, cfg.dataset.download)
        else:
            test_images, test_labels = splits.val_images, splits.val_labels
        note = f"{name} official test split"
    else:
        test_images, test_labels = splits.val_images, splits.val_labels
        note = f"{name or 'dataset'} validation split (it has no separate test split)"
    if not isinstance(splits.train_images, torch.Tensor):
        raise RunDirError(
            "evaluation keeps the images in memory, but this run streamed them from disk "
            "(dataset.in_memory=false, or larger than dataset.memory_limit_mb)"
        )
    data = EvalData(splits.train_images.cpu(), splits.train_labels.cpu().long(), test_images.cpu(),
                    test_labels.cpu().long(), note)
    _DATA[key] = data
    return data
