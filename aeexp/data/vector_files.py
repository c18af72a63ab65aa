"""Float vectors on disk: one ``.npy``, ``.pt`` or ``.safetensors`` file, or a directory of
shards of one of those formats (read in name order), opened without loading them.

Every format is memory-mapped: ``.npy`` through ``np.load(mmap_mode="r")``, ``.pt`` through
``torch.load(mmap=True)`` (a tensor, or a dict of tensors), ``.safetensors`` through
``safe_open`` (``pip install safetensors``, imported only when such a file is read). Rows
come back as torch tensors in the dtype they are stored in (float16, bfloat16, float32,
float64); nothing is converted until a batch is on the training device.

A :class:`VectorSource` knows each shard's rows, width, dtype and labels from the headers
alone, and reads rows by number (:meth:`VectorSource.read`, :meth:`VectorSource.gather`);
every row read is checked for NaN/inf. Each problem is one :class:`DataFileError` line that
names ``dataset.path``, the file, what it holds and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from aeexp.config import ConfigError
from aeexp.data.datasets import DataFileError, DataNotFoundError

FORMATS = {".npy": "npy", ".pt": "pt", ".safetensors": "safetensors"}
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
ALLOWED_DTYPES = "float16, bfloat16 (.pt, .safetensors), float32 or float64"
SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
USAGE = ("dataset=vectors needs dataset.path=<a .npy, .pt or .safetensors file of float vectors (N, D), "
         "or a directory of such shards>")
LABELS_KEY = "labels"
DEFAULT_KEYS = ("vectors", "activations", "data", "x")  # tried in this order when dataset.key is null


def _safe_open(path: Path):
    try:
        from safetensors import safe_open
    except ImportError:
        raise ConfigError("dataset.path", f"{path} is a .safetensors file, but the safetensors package is not "
                          "installed; allowed: pip install safetensors (or pip install 'aeexp[vectors]'), "
                          "or a .npy / .pt file") from None
    try:
        return safe_open(str(path), framework="pt")
    except Exception as err:  # SafetensorError: header garbage, truncated file
        raise DataFileError(f"dataset.path: {path} cannot be read as safetensors "
                            f"({' '.join(str(err).split()) or type(err).__name__})") from None


@dataclass
class Shard:
    """One file: its rows, width and dtype (from its header), and where its tensor is."""

    path: Path
    fmt: str
    rows: int
    width: int
    dtype: torch.dtype
    key: Optional[str] = None  # the tensor's name in a .pt dict or a .safetensors file
    labels: Optional[torch.Tensor] = None  # a 'labels' entry of a .pt dict or .safetensors file
    handle: Any = field(default=None, repr=False)  # the memory map (opened on first read)


def _pick_key(path: Path, keys: list[str], key: Optional[str]) -> str:
    if key is not None:
        if key not in keys:
            raise DataFileError(f"dataset.key={key!r}: {path} holds no tensor of that name; allowed: one of "
                                f"{', '.join(keys) or 'none'}")
        return key
    candidates = [k for k in keys if k != LABELS_KEY]
    for name in DEFAULT_KEYS:
        if name in candidates:
            return name
    if len(candidates) == 1:
        return candidates[0]
    raise DataFileError(f"dataset.path: {path} holds tensors {', '.join(keys) or '(none)'}; allowed: one tensor of "
                        f"vectors besides '{LABELS_KEY}', or name it with dataset.key=<name>")


def _check_array(path: Path, shape: tuple[int, ...], dtype: Any, key: Optional[str]) -> None:
    what = f"{path}" + (f" [{key!r}]" if key else "")
    if dtype not in FLOAT_DTYPES:
        raise DataFileError(f"dataset.path: {what} holds {str(dtype).replace('torch.', '')} values; allowed: "
                            f"{ALLOWED_DTYPES} vectors (N, D)")
    if len(shape) != 2 or shape[1] < 1:
        raise DataFileError(f"dataset.path: {what} holds an array of shape {tuple(shape)}; allowed: 2-D float vectors "
                            "(N, D), one row per sample (flatten images or tokens first)")


def _numpy_dtype(dtype: np.dtype) -> Any:
    try:
        return torch.from_numpy(np.empty(0, dtype=dtype)).dtype
    except TypeError:
        return dtype


def _load_pt(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a file in torch's legacy format cannot be memory-mapped
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise DataFileError(f"dataset.path: {path} cannot be read as a .pt tensor file "
                                f"({' '.join(str(err).split())[:200]})") from None
    except Exception as err:  # pickle refusals (weights_only), garbage, truncated zip
        raise DataFileError(f"dataset.path: {path} cannot be read as a .pt tensor file "
                            f"({' '.join(str(err).split())[:200]})") from None


def _labels_of(path: Path, labels: Any, rows: int) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or len(labels) != rows \
            or labels.dtype.is_floating_point or labels.dtype.is_complex:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        dtype = str(getattr(labels, "dtype", "")).replace("torch.", "")
        raise DataFileError(f"dataset.path: {path} ['{LABELS_KEY}'] is {dtype} {shape}; allowed: integer class ids, "
                            f"one per row ({rows},)")
    return labels.to(torch.int64)


def open_shard(path: Path, key: Optional[str]) -> Shard:
    """A shard from its header (nothing but the labels is read)."""
    fmt = FORMATS[path.suffix]
    try:
        if fmt == "npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            dtype = _numpy_dtype(array.dtype)
            _check_array(path, array.shape, dtype, None)
            return Shard(path, fmt, array.shape[0], array.shape[1], dtype, handle=array)
    except (ValueError, OSError, EOFError) as err:
        raise DataFileError(f"dataset.path: {path} cannot be read as a .npy array "
                            f"({' '.join(str(err).split())[:200]})") from None
    if fmt == "pt":
        content = _load_pt(path)
        if isinstance(content, torch.Tensor):
            tensor, name, labels = content, None, None
        elif isinstance(content, dict) and any(isinstance(v, torch.Tensor) for v in content.values()):
            tensors = {str(k): v for k, v in content.items() if isinstance(v, torch.Tensor)}  # other entries: ignored
            name = _pick_key(path, list(tensors), key)
            tensor, labels = tensors[name], tensors.get(LABELS_KEY)
        else:
            raise DataFileError(f"dataset.path: {path} holds a {type(content).__name__}; allowed: a tensor (N, D), or "
                                f"a dict of tensors (the vectors, and optionally '{LABELS_KEY}')")
        _check_array(path, tuple(tensor.shape), tensor.dtype, name)
        rows = tensor.shape[0]
        return Shard(path, fmt, rows, tensor.shape[1], tensor.dtype, name,
                     None if labels is None else _labels_of(path, labels, rows), handle=tensor)
    handle = _safe_open(path)
    keys = list(handle.keys())
    name = _pick_key(path, keys, key)
    piece = handle.get_slice(name)
    dtype = SAFETENSORS_DTYPES.get(piece.get_dtype(), piece.get_dtype())
    shape = tuple(piece.get_shape())
    _check_array(path, shape, dtype, name)
    labels = _labels_of(path, handle.get_tensor(LABELS_KEY), shape[0]) if LABELS_KEY in keys else None
    return Shard(path, fmt, shape[0], shape[1], dtype, name, labels, handle=handle)


def shard_paths(path: str) -> list[Path]:
    """The file ``path``, or the shards of the directory ``path`` in name order; one format."""
    where = Path(path).expanduser()
    if path in ("", "???") or not where.exists():
        raise DataNotFoundError(f"dataset.path={path!r}: no such file or directory; {USAGE}")
    if where.is_file():
        if where.suffix not in FORMATS:
            raise ConfigError("dataset.path", f"got {path!r} (a {where.suffix or 'suffix-less'} file), allowed: "
                              f"a {', '.join(FORMATS)} file, or a directory of such shards")
        return [where]
    files = sorted(p for p in where.iterdir() if p.is_file() and p.suffix in FORMATS and not p.name.startswith("."))
    if not files:
        raise DataNotFoundError(f"dataset.path={path!r}: a directory with no {', '.join(FORMATS)} files; {USAGE}")
    kinds = sorted({p.suffix for p in files})
    if len(kinds) > 1:
        raise DataFileError(f"dataset.path={path!r}: shards of several formats ({', '.join(kinds)}); allowed: shards "
                            "of one format")
    return files


class VectorSource:
    """The rows of every shard, as one numbered sequence (shard after shard)."""

    def __init__(self, path: str, key: Optional[str] = None):
        self.path = str(path)
        self.shards = [open_shard(p, key) for p in shard_paths(path)]
        first = self.shards[0]
        for shard in self.shards[1:]:
            if shard.width != first.width:
                raise DataFileError(f"dataset.path={self.path!r}: {shard.path.name} holds vectors of width "
                                    f"{shard.width}, {first.path.name} of width {first.width}; allowed: shards of "
                                    "one width")
            if shard.dtype != first.dtype:
                raise DataFileError(f"dataset.path={self.path!r}: {shard.path.name} holds "
                                    f"{str(shard.dtype).replace('torch.', '')}, {first.path.name} "
                                    f"{str(first.dtype).replace('torch.', '')}; allowed: shards of one dtype")
        labelled = [s.labels is not None for s in self.shards]
        if any(labelled) and not all(labelled):
            missing = self.shards[labelled.index(False)].path.name
            raise DataFileError(f"dataset.path={self.path!r}: {missing} has no '{LABELS_KEY}' but other shards do; "
                                "allowed: labels in every shard or in none")
        self.width, self.dtype = first.width, first.dtype
        self.offsets = np.cumsum([0] + [s.rows for s in self.shards])
        self.rows = int(self.offsets[-1])

    def __len__(self) -> int:
        return self.rows

    def nbytes(self) -> int:
        return self.rows * self.width * torch.empty(0, dtype=self.dtype).element_size()

    def stored_labels(self) -> Optional[torch.Tensor]:
        if self.shards[0].labels is None:
            return None
        return torch.cat([s.labels for s in self.shards])

    def shard_rows(self, indices: np.ndarray) -> list[np.ndarray]:
        """Sorted global row numbers split by shard, as each shard's local row numbers."""
        cuts = np.searchsorted(indices, self.offsets)
        return [indices[cuts[s] : cuts[s + 1]] - self.offsets[s] for s in range(len(self.shards))]

    def read(self, shard_index: int, rows: np.ndarray) -> torch.Tensor:
        """Rows ``rows`` (sorted local row numbers) of one shard, as stored; checked finite."""
        shard = self.shards[shard_index]
        if len(rows) == 0:
            return torch.empty(0, self.width, dtype=self.dtype)
        first, last = int(rows[0]), int(rows[-1]) + 1
        dense = last - first == len(rows)
        if shard.fmt == "npy":
            block = shard.handle[first:last] if dense else shard.handle[rows]
            out = torch.from_numpy(np.array(block, copy=True))
        elif shard.fmt == "pt":
            out = shard.handle[first:last].clone() if dense else shard.handle[torch.from_numpy(rows)]
        else:
            block = shard.handle.get_slice(shard.key)[first:last]
            out = block if dense else block[torch.from_numpy(rows - first)]
        check_finite(out, shard.path, rows)
        return out

    def gather(self, indices: np.ndarray) -> torch.Tensor:
        """Global rows ``indices`` (any order) as one tensor in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        order = np.argsort(indices, kind="stable")
        out = torch.empty(len(indices), self.width, dtype=self.dtype)
        done = 0
        for s, rows in enumerate(self.shard_rows(indices[order])):
            if len(rows):
                out[torch.from_numpy(order[done : done + len(rows)])] = self.read(s, rows)
                done += len(rows)
        return out


# NaN and inf are the values whose exponent bits are all ones: one integer pass finds them
# (torch.isfinite on float16 is 3-4x slower on a CPU, and this runs on every row streamed).
EXPONENT_BITS = {torch.float16: (torch.int16, 0x7FFF, 0x7C00), torch.bfloat16: (torch.int16, 0x7FFF, 0x7F80),
                 torch.float32: (torch.int32, 0x7FFFFFFF, 0x7F800000),
                 torch.float64: (torch.int64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000)}


def non_finite_rows(block: torch.Tensor) -> torch.Tensor:
    """A bool per row: whether it holds NaN or inf."""
    if block.dtype not in EXPONENT_BITS or not block.is_contiguous():
        return ~torch.isfinite(block).all(1)
    integer, magnitude, exponent = EXPONENT_BITS[block.dtype]
    return (block.view(integer) & magnitude).amax(1) >= exponent


def check_finite(block: torch.Tensor, path: Path, rows: np.ndarray) -> None:
    """DataFileError naming the file and the first row that holds NaN or inf."""
    for begin in range(0, len(block), 65536):  # a bounded temporary, whatever the block's size
        bad = non_finite_rows(block[begin : begin + 65536])
        if bool(bad.any()):
            row = int(rows[begin + int(bad.nonzero()[0])])
            raise DataFileError(f"dataset.path: {path} row {row} holds NaN or inf; allowed: finite values (drop or "
                                "repair those rows)")


def read_labels(path: str, rows: int) -> torch.Tensor:
    """``dataset.labels_path``: one file or a directory of shards (.npy, .pt, .safetensors) of
    integer class ids, ``rows`` in all, in the order of the vectors."""
    try:
        files = shard_paths(path)
    except (DataNotFoundError, ConfigError):
        raise DataNotFoundError(f"dataset.labels_path={path!r}: no such file, or not a {', '.join(FORMATS)} file or a "
                                "directory of such shards; allowed: integer class ids (N,), one per vector, in one "
                                "of those formats") from None
    parts = []
    for file in files:
        if file.suffix == ".npy":
            try:
                array = np.load(file, allow_pickle=False)
            except (ValueError, OSError, EOFError) as err:
                raise DataFileError(f"dataset.labels_path: {file} cannot be read as a .npy array ({err})") from None
            part = torch.from_numpy(array) if array.dtype.kind in "iub" else array
        elif file.suffix == ".pt":
            part = _load_pt(file)
            if isinstance(part, dict):
                part = part.get(LABELS_KEY, part)
        else:
            handle = _safe_open(file)
            keys = list(handle.keys())
            name = LABELS_KEY if LABELS_KEY in keys else keys[0] if len(keys) == 1 else None
            part = handle.get_tensor(name) if name else keys
        if not isinstance(part, torch.Tensor) or part.dim() != 1 or part.dtype.is_floating_point:
            what = f"{part.dtype} {tuple(part.shape)}" if hasattr(part, "shape") else type(part).__name__
            raise DataFileError(f"dataset.labels_path: {file} holds {what}; allowed: integer class ids (N,)")
        parts.append(part.to(torch.int64))
    labels = torch.cat(parts)
    if len(labels) != rows:
        raise DataFileError(f"dataset.labels_path={path!r}: {len(labels)} labels for {rows} vectors of dataset.path; "
                            "allowed: one label per vector, in the same order")
    if len(labels) and int(labels.min()) < 0:
        raise DataFileError(f"dataset.labels_path={path!r}: label {int(labels.min())}; allowed: class ids >= 0")
    return labels
