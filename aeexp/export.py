"""``python -m aeexp export run_dir=<dir> split=test``: a trained run's codes, to files.

Each image of the split goes through the run's encoder (``best.pt`` by default) in
batches, and its code is written straight into a ``.npy`` file opened as a memory map, so
a split larger than memory streams through; the labels go beside it. ``.pt`` keeps them in
one tensor file instead (in memory). Arguments are ``key=value``, as on aeexp's other
command lines:

    python -m aeexp export run_dir=outputs/2026-11-22/10-00-00 split=test
    python -m aeexp export run_dir=<dir> split=train which=last format=pt out=/tmp/codes device=cuda
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from aeexp.config import ConfigError
from aeexp.data.images import to_float
from aeexp.runs import load_run

log = logging.getLogger("aeexp.export")

SPLITS = ("train", "val", "test")
FORMATS = ("npy", "pt")
DEFAULTS = {"run_dir": None, "split": "test", "which": "best", "format": "npy", "out": None, "device": "cpu",
            "batch_size": "2048", "trust_targets": "false", "dataset_root": None}


def parse(argv: list[str]) -> dict[str, Any]:
    """``key=value`` arguments over :data:`DEFAULTS`; ConfigError naming a bad one."""
    args = dict(DEFAULTS)
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in DEFAULTS:
            raise ConfigError(key or item, f"unknown argument {item!r}; allowed: {', '.join(f'{k}=...' for k in DEFAULTS)}")
        args[key] = value
    if not args["run_dir"]:
        raise ConfigError("run_dir", "missing; usage: python -m aeexp export run_dir=<run directory> [split=test]")
    for key, choices in (("split", SPLITS), ("format", FORMATS), ("which", ("best", "last"))):
        if args[key] not in choices:
            raise ConfigError(key, f"got {args[key]!r}, allowed: one of {', '.join(choices)}")
    if not args["batch_size"].isdigit() or int(args["batch_size"]) < 1:
        raise ConfigError("batch_size", f"got {args['batch_size']!r}, allowed: an integer >= 1")
    return args


@torch.no_grad()
def export_codes(argv: list[str]) -> dict[str, Path]:
    """Write the codes (and labels) of a run's split; return the files written."""
    from aeexp.device import resolve_device
    from aeexp.evaluation.loading import load_splits

    args = parse(argv)
    device = resolve_device(args["device"])
    run = load_run(args["run_dir"], which=args["which"], device=device, dataset_root=args["dataset_root"],
                   trust_targets=args["trust_targets"].lower() == "true")
    data = load_splits(run.cfg)
    images, labels = getattr(data, f"{args['split']}_images"), getattr(data, f"{args['split']}_labels")
    out = Path(args["out"]) if args["out"] else run.run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    batch_size, n = int(args["batch_size"]), len(images)
    code_size = run.model.encode(to_float(images[:1]).to(device)).reshape(1, -1).shape[1]
    codes_path, labels_path = out / f"{args['split']}_codes.{args['format']}", out / f"{args['split']}_labels.{args['format']}"
    codes = (np.lib.format.open_memmap(codes_path, mode="w+", dtype=np.float32, shape=(n, code_size))
             if args["format"] == "npy" else torch.empty(n, code_size))
    for begin in tqdm(range(0, n, batch_size), desc=f"encoding {args['split']}", leave=False):
        batch = to_float(images[begin : begin + batch_size].to(device))
        z = run.model.encode(batch).reshape(len(batch), -1).float().cpu()
        codes[begin : begin + len(z)] = z.numpy() if args["format"] == "npy" else z
    if args["format"] == "npy":
        codes.flush()
        del codes
        np.save(labels_path, labels.numpy())
    else:
        torch.save(codes, codes_path)
        torch.save(labels.clone(), labels_path)
    log.info("%d %s codes of %d features from %s (%s.pt) -> %s, %s", n, args["split"], code_size, run.run_dir,
             args["which"], codes_path, labels_path)
    return {"codes": codes_path, "labels": labels_path}
