"""Device choice and mixed precision, so no other module hard-codes a device."""

from __future__ import annotations

import contextlib

import torch

from aeexp.config import ConfigError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; an explicit choice must exist."""
    cuda = torch.cuda.is_available()
    mps = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    available = ["auto", "cpu"] + (["cuda"] if cuda else []) + (["mps"] if mps else [])
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise ConfigError("device.name", f"got {name!r}, but it is not available here; allowed here: {', '.join(available)}")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    """A context manager running the forward pass in ``precision`` (no-op for fp32)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """fp16 needs loss scaling against gradient underflow; bf16 and fp32 do not."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
