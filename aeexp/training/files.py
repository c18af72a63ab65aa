"""Writing run files atomically, and reading checkpoints safely.

A checkpoint or ``metrics.json`` is written to a temporary file in the same folder and
then renamed over the old one, so a process killed mid-write leaves the previous good
file in place, never a half-written one. Checkpoints hold only tensors and plain Python
values (the config travels as YAML text) and are read with ``weights_only=True``, so
loading one cannot run code.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or not ours."""


def _default_file_mode() -> int:
    """The mode an ordinary new file gets (0o666 less the umask): mkstemp's 0o600 would
    hide checkpoints from a TensorBoard server or a colleague sharing ``outputs/``."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    _atomic_write(path, lambda handle: torch.save(state, handle))


def write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    _atomic_write(path, lambda handle: handle.write(text.encode()))


def load_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {path} cannot be read (truncated or corrupted?): {type(err).__name__}: "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not an aeexp checkpoint (no 'model'/'config' entries)")
    return state
