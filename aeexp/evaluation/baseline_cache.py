"""Baselines kept between evaluations: computed once per data and settings, for a whole sweep.

The baselines beside a run's figures (PCA at its code size, the linear probe on raw pixels,
and the semi-supervised scratch classifiers, freshly initialised models of the run's
architecture) depend on the data and a few settings, never on the trained weights, so the runs
of a sweep share them and a second evaluation of the same sweep needs none of them again. Each
entry is found by a digest of what it depends on: fingerprints of the tensors actually used
(their dtype, shape and bytes, :func:`fingerprint`) plus the settings that change it (code size,
probe settings, seeds; for a scratch classifier the model's structure, initial weights and
config), so changed data or a changed setting can never meet a stale entry.

Entries live in the run's ``paths.cache_dir`` (``<cache_dir>/eval_baselines/<name>-<digest>.pt``)
and in memory for the process. A file holds tensors and plain numbers only: it is written to a
temporary file and renamed into place (a killed evaluation leaves no half-written entry) and read
back with ``torch.load(weights_only=True)``, so reading one runs no code. An unreadable entry (a
truncated or foreign file, or one written for another key) costs one warning and is computed
again; a cache folder that cannot be written costs one warning and the evaluation goes on.
Delete the folder at any time to start afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from aeexp.checkpoints import save_checkpoint

log = logging.getLogger(__name__)

FORMAT = 1  # bumped whenever what an entry holds, or how a baseline is computed, changes
FOLDER = "eval_baselines"
Values = dict[str, Any]  # tensors and plain numbers

_MEMORY: dict[str, Values] = {}  # digest -> values, shared by the runs a process evaluates
_UNWRITABLE: set[Path] = set()  # cache folders that refused a write: warned about once per process


def fingerprint(tensor: torch.Tensor) -> str:
    """A digest of a tensor's dtype, shape and bytes (BLAKE2b; about 0.1 s for 47 MB)."""
    t = tensor.detach().cpu().contiguous()
    digest = hashlib.blake2b(f"{t.dtype}{tuple(t.shape)}".encode(), digest_size=16)
    if t.numel():
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)  # the raw bytes, any dtype
    return digest.hexdigest()


def key_text(name: str, key: dict[str, Any]) -> str:
    """The canonical text of an entry's key (what its digest is of, and what its file repeats)."""
    return json.dumps({"format": FORMAT, "baseline": name, **key}, sort_keys=True)


class BaselineCache:
    """Baselines by key, in memory and (``folder`` not None) on disk. ``reused`` lists the
    entries read from disk since it was last emptied, for the one log line saying so."""

    def __init__(self, folder: Path | str | None):
        self.folder = Path(folder) / FOLDER if folder is not None else None
        self.reused: list[str] = []

    def get(self, name: str, key: dict[str, Any], compute: Callable[[], Values], label: str | None = None) -> Values:
        """The values of baseline ``name`` for ``key``: from memory, else from disk, else
        ``compute()`` (then kept in both). ``label`` names it in log lines (default ``name``)."""
        text = key_text(name, key)
        digest = hashlib.sha256(text.encode()).hexdigest()[:32]
        if digest in _MEMORY:
            return _MEMORY[digest]
        path = self.folder / f"{name}-{digest}.pt" if self.folder is not None else None
        values = self._read(path, text) if path is not None and path.is_file() else None
        if values is None:
            values = compute()
            if path is not None:
                self._write(path, text, values)
        else:
            self.reused.append(label or name)
        _MEMORY[digest] = values
        return values

    def _read(self, path: Path, text: str) -> Values | None:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                entry = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(entry, dict) or entry.get("key") != text or not isinstance(entry.get("values"), dict):
                raise ValueError("not an entry for this key")
            return entry["values"]
        except Exception as err:  # truncated, foreign or tampered: recompute, never fail the evaluation
            reason = (str(err).strip().splitlines() or [""])[0][:120]
            log.warning("baseline cache entry %s is unreadable (%s: %s): computing it again", path,
                        type(err).__name__, reason)
            return None

    def _write(self, path: Path, text: str, values: Values) -> None:
        if path.parent in _UNWRITABLE:
            return
        try:
            save_checkpoint(path, {"key": text, "values": values})  # temporary file, then os.replace
        except OSError as err:
            _UNWRITABLE.add(path.parent)
            log.warning("baseline cache %s cannot be written (%s): baselines are kept in memory only "
                        "(eval.cache=false stops trying)", path.parent, err.strerror or err)


def forget_memory() -> None:
    """Empty the in-process entries (the next lookup reads the disk): for tests and benchmarks."""
    _MEMORY.clear()
    _UNWRITABLE.clear()
