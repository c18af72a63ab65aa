"""Writing run files atomically, and reading checkpoints safely.

A checkpoint or ``metrics.json`` is written to a temporary file in the same folder and
then renamed over the old one, so a process killed mid-write leaves the previous good
file in place, never a half-written one. Checkpoints hold only tensors and plain Python
values (the config travels as YAML text) and are read with ``weights_only=True``, so
loading one cannot run code.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import tempfile
import warnings
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
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda handle: handle.write(text.encode()))


def load_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """The checkpoint at ``path``, read with ``weights_only=True``: tensors and plain values only.

    Every failure is one CheckpointError line of ours. A file whose pickle would build any
    other object or call any function is refused as such; torch's own message, which
    suggests ``weights_only=False`` (running the file's code), is never shown.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():  # a pickle from outside torch.save also warns about its protocol
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise _unreadable(path, err) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not an aeexp checkpoint (no 'model'/'config' entries)")
    return state


# What torch's weights-only unpickler says when a pickle names a function or class to call.
_OBJECT_REFUSALS = re.compile(r"GLOBAL (\S+?)(?=\s|$)|Can only (?:create new object|build)|reduce for")
# Lines of torch's message that are advice (load it anyway) rather than the reason.
_ADVICE = ("weights only load failed", "weights_only", "add_safe_globals", "safe_globals", "trusted source",
           "trust the source", "check the documentation", "file an issue")


def _unreadable(path: Path, err: Exception) -> CheckpointError:
    text = str(err).strip()
    if isinstance(err, pickle.UnpicklingError) and "weights only load failed" in text.lower():
        refused = _OBJECT_REFUSALS.search(text)
        if refused:
            named = f" (it names {refused.group(1).rstrip('.')})" if refused.group(1) else ""
            return CheckpointError(
                f"checkpoint {path} contains Python objects other than tensors and plain values{named}: it was not "
                "written by aeexp, or was tampered with; aeexp refuses to load it"
            )
    reason = next((line.strip() for line in text.splitlines()
                   if line.strip() and not any(a in line.lower() for a in _ADVICE)), "")
    return CheckpointError(
        f"checkpoint {path} cannot be read (truncated or corrupted?): {type(err).__name__}"
        + (f": {reason}" if reason else "")
    )


def describe_os_error(err: OSError) -> str:
    """One line for a failed read or write: which file, what went wrong, what to do."""
    path = err.filename or "a run file"
    hints = {
        errno.ENOSPC: "the disk is full: free space (the run's last complete epoch is in last.pt; continue with "
                      "trainer.resume=true)",
        errno.EDQUOT: "the disk quota is used up: free space, then continue with trainer.resume=true",
        errno.EROFS: "the file system is read-only: choose a writable hydra.run.dir (or dataset.root)",
        errno.EACCES: "permission denied: choose a folder you may write to (hydra.run.dir, dataset.root)",
        errno.EPERM: "permission denied: choose a folder you may write to (hydra.run.dir, dataset.root)",
        errno.ENOTDIR: "a file stands where a folder is needed: choose another hydra.run.dir",
        errno.EEXIST: "a file stands where a folder is needed: choose another hydra.run.dir",
    }
    return f"cannot write or read {path}: {err.strerror or err}; {hints.get(err.errno, 'check the path and the disk')}"
