"""Seconds per epoch on one device, for each model x precision x compile choice, next to a plain loop.

The README's GPU figures come from this script (``benchmarks/gpu.sh`` runs it on a CUDA
machine). For every variant it builds aeexp's Trainer on the same data (Fashion-MNIST when
its files are there, else synthetic data of the same size: 60,000 28x28 images), runs one
untimed warm-up epoch (this is where ``device.compile=true`` compiles), then times
``--epochs`` training epochs and one validation pass each, interleaving the variants so that a
drift in clock speed hits all of them alike, and reports medians: seconds per training epoch,
training samples per second, and the validation pass.

Beside each model it times a plain PyTorch loop over the same device-resident tensors
(``randperm``, slice, forward, MSE, backward, Adam step: what a notebook would write, no
DataLoader, no aeexp) with a copy of the same initial weights, and prints the ratio:
aeexp's per-epoch work (noise, sparsity hooks, divergence checks, metrics) should cost little
over that. ``benchmarks/bench_epoch.py`` gives the DataLoader comparison. Nothing is
asserted; the targets (an fc epoch under 0.1 s and a conv epoch under 1 s on an H100) are
for a person to read.

    python benchmarks/bench_device.py --device cuda
    python benchmarks/bench_device.py --device cpu --models fc --precisions fp32 --compile off
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
from pathlib import Path

import aeexp  # noqa: F401  (first: its OpenMP wait policy must be set before torch loads, as in train.py)
import torch
import torch.nn.functional as F
from bench_epoch import REPO, clock
from hydra import compose, initialize_config_dir

from aeexp.config import validate
from aeexp.data.datasets import SYSTEM_DIRS
from aeexp.data.images import to_float
from aeexp.device import resolve_device
from aeexp.models.factory import build_model
from aeexp.training.run import load_data, seed_everything
from aeexp.training.trainer import Trainer

MODELS = {"fc": ["model=fc"], "conv": ["model=conv"]}


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return validate(compose("config", overrides=overrides))


def dataset_overrides() -> list[str]:
    """Fashion-MNIST if its files are installed, else synthetic images of MNIST's size."""
    if (SYSTEM_DIRS["fashion_mnist"][0] / "train-images-idx3-ubyte.gz").exists():
        return ["dataset=fashion_mnist"]
    return ["dataset=synthetic", "dataset.num_train=60000", "dataset.num_val=10000"]


def plain_epoch(model, optimizer, images: torch.Tensor, batch_size: int, generator) -> None:
    """One epoch of the loop a notebook would write over device-resident float images."""
    order = torch.randperm(len(images), generator=generator).to(images.device)
    for start in range(0, len(images), batch_size):
        x = images[order[start:start + batch_size]]
        loss = F.mse_loss(model(x)[0], x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def main() -> None:
    p = argparse.ArgumentParser(description="seconds per epoch per model/precision/compile, next to a plain loop")
    p.add_argument("--device", default="auto")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    p.add_argument("--compile", nargs="+", default=["off", "on"], choices=["off", "on"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    device = resolve_device(args.device)
    data_overrides = dataset_overrides()
    base = [*data_overrides, f"device={device.type}", "scheduler=none", "trainer.progress=false",
            "trainer.image_every=0", f"trainer.batch_size={args.batch_size}"]
    data = load_data(compose_config(base)).to(device)
    train_images = to_float(data.train_images)

    variants = {f"{m} {p} compile={c}": MODELS[m] + [f"device.precision={p}", f"device.compile={c == 'on'}"]
                for m in args.models for p in args.precisions for c in args.compile}
    seconds = {name: [] for name in variants}
    val_seconds = {name: [] for name in variants}
    plain_seconds = {m: [] for m in args.models}
    with tempfile.TemporaryDirectory() as tmp:
        trainers, plains = {}, {}
        for i, (name, overrides) in enumerate(variants.items()):
            cfg = compose_config(base + overrides)
            seed_everything(cfg.seed)
            trainers[name] = Trainer(cfg, build_model(cfg, data.shape), data, Path(tmp) / str(i), device)
        for m in args.models:  # same architecture and initial weights, a plain loop
            cfg = compose_config(base + MODELS[m])
            seed_everything(cfg.seed)
            model = copy.deepcopy(build_model(cfg, data.shape)).to(device)
            plains[m] = (model, torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr), torch.Generator().manual_seed(0))
        for name, trainer in trainers.items():  # warm-up (and compilation), untimed
            trainer.train_epoch(0)
            trainer.validate()
        for m, (model, opt, gen) in plains.items():
            plain_epoch(model, opt, train_images, args.batch_size, gen)
        for epoch in range(1, args.epochs + 1):
            for name, trainer in trainers.items():
                start = clock(device)
                trainer.train_epoch(epoch)
                mid = clock(device)
                trainer.validate()
                seconds[name].append(mid - start)
                val_seconds[name].append(clock(device) - mid)
            for m, (model, opt, gen) in plains.items():
                start = clock(device)
                plain_epoch(model, opt, train_images, args.batch_size, gen)
                plain_seconds[m].append(clock(device) - start)

    name_of_device = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    print(f"{data_overrides[0]}, {len(train_images)} training images, batch {args.batch_size}, {name_of_device}, "
          f"torch {torch.__version__}, median of {args.epochs} epochs")
    print(f"{'variant':<28}{'train s/epoch':>14}{'samples/s':>12}{'val s':>9}{'vs plain loop':>15}")
    figures = {}
    for name in variants:
        train_s, val_s = statistics.median(seconds[name]), statistics.median(val_seconds[name])
        plain = statistics.median(plain_seconds[name.split()[0]])
        figures[name] = {"train_s": train_s, "samples_per_s": len(train_images) / train_s, "val_s": val_s,
                         "plain_train_s": plain}
        print(f"{name:<28}{train_s:>14.4f}{len(train_images) / train_s:>12,.0f}{val_s:>9.4f}{train_s / plain:>14.2f}x")
    for m in args.models:
        print(f"{'plain loop ' + m + ' fp32':<28}{statistics.median(plain_seconds[m]):>14.4f}")
    if args.json:
        args.json.write_text(json.dumps({"device": name_of_device, "torch": torch.__version__, "figures": figures,
                                         "seconds": seconds, "plain_seconds": plain_seconds}, indent=2))


if __name__ == "__main__":
    main()
