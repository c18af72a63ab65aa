"""Seconds per epoch: aeexp's Trainer next to the first seed's DataLoader loop, in one run.

The trainer should stay within a small factor of what the machine's matrix product allows
(README, "Speed"), shown side by side with the seed's idiom on the same data:
a torchvision dataset whose samples are converted one by one, wrapped in a dataset that
applies an input and a target transform per sample, behind a shuffling DataLoader. This script trains the default fc model (784-64-784, LeakyReLU) on
Fashion-MNIST both ways: the same composed config, the same initial weights, Adam 1e-3 at
a constant lr, the same batch size; one untimed warm-up epoch each, then timed epochs
interleaved so that drift in machine speed hits both sides alike. It prints seconds per
epoch (train+validation and train only; medians), their ratio, both validation MSEs (they
should agree within 5%), and the trainer's GFLOP/s next to torch.mm's on the same device.
It asserts no timings: the target (trainer at least 10x the DataLoader loop on 2 CPU
cores) is for a person to read. Other processes on the machine skew CPU figures badly
(two busy threads each), so run it on an otherwise idle machine.

    python benchmarks/bench_epoch.py
    python benchmarks/bench_epoch.py --baseline-workers 2 --json bench.json
    python benchmarks/bench_epoch.py device.precision=bf16    # extra Hydra overrides
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import aeexp  # noqa: F401  (first: its OpenMP wait policy must be set before torch loads, as in train.py)
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2 as transforms

from aeexp.config import validate
from aeexp.data.datasets import TORCHVISION_CLASSES, ensure_idx_files, torchvision_class
from aeexp.device import resolve_device
from aeexp.models.factory import build_model
from aeexp.training.run import load_data, seed_everything
from aeexp.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


def clock(device: torch.device) -> float:
    """perf_counter after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    return time.perf_counter()


def matmul_gflops(device: torch.device, n: int = 2048, seconds: float = 1.0) -> float:
    """GFLOP/s of float32 n x n torch.mm (2 n^3 FLOPs each), the machine's practical ceiling."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)  # warm-up
    reps, start = 0, clock(device)
    while (elapsed := clock(device) - start) < seconds:
        for _ in range(4):
            torch.mm(a, b)
        reps += 4
    return 2 * n**3 * reps / elapsed / 1e9


def to_float_image() -> transforms.Compose:
    """PIL image -> float tensor in [0, 1]: the seed's per-sample conversion."""
    return transforms.Compose([transforms.ToImage(), transforms.ToDtype(torch.float32, scale=True)])


class SeedStyleDataset(Dataset):
    """The first seed's idiom for autoencoder data: a labelled torchvision dataset wrapped so
    that every sample goes through its own input and target transform pipelines (here:
    convert and keep the image shape), returning an (input, target) pair per sample."""

    def __init__(self, images: Dataset):
        self.images = images
        self.input_transform = to_float_image()
        self.target_transform = to_float_image()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image, _ = self.images[index]
        return self.input_transform(image), self.target_transform(image)


def baseline_train(model, opt, loader, device) -> None:
    """The seed's loop, verbatim apart from moving the batch to the device."""
    model.train()
    mse = nn.MSELoss()
    for x, target in loader:
        x, target = x.to(device), target.to(device)
        opt.zero_grad()
        x_hat, _ = model(x)
        loss = mse(x_hat, target)
        loss.backward()
        opt.step()


@torch.no_grad()
def baseline_validate(model, loader, device) -> float:
    """Per-pixel MSE over the test split (batch means weighted by batch size)."""
    model.eval()
    total, count = 0.0, 0
    for x, target in loader:
        x, target = x.to(device), target.to(device)
        x_hat, _ = model(x)
        total += F.mse_loss(x_hat, target).item() * len(x)
        count += len(x)
    return total / count


def trainer_val_mse(trainer: Trainer) -> float:
    return trainer.validate()["val_mse"]


def timed_epoch(train, validate_fn, device) -> dict[str, float]:
    start = clock(device)
    train()
    mid = clock(device)
    val_mse = validate_fn()
    end = clock(device)
    return {"epoch_s": end - start, "train_s": mid - start, "val_mse": val_mse}


def main() -> None:
    p = argparse.ArgumentParser(description="aeexp Trainer vs a DataLoader loop: seconds per epoch")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--dataset", default="fashion_mnist", choices=sorted(TORCHVISION_CLASSES))
    p.add_argument("--root", default=os.environ.get("AEEXP_DATA", "data"), help="holds <ClassName>/raw/")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--baseline-workers", type=int, default=0, help="DataLoader num_workers of the baseline")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("overrides", nargs="*", help="more Hydra overrides, e.g. trainer.num_threads=1")
    args = p.parse_args()

    overrides = [
        "model=fc", f"dataset={args.dataset}", f"device={args.device}",
        "optimizer=adam", "optimizer.lr=1e-3", "scheduler=none", f"trainer.epochs={args.epochs}",
        f"trainer.batch_size={args.batch_size}", "trainer.progress=false", "trainer.image_every=0",
        *args.overrides,
    ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    cfg.dataset.root = args.root  # set after composing: a path needs no override quoting
    cfg = validate(cfg)
    device = resolve_device(cfg.device.name)
    if cfg.trainer.num_threads:  # as run_training does; one process, so both sides get it
        torch.set_num_threads(cfg.trainer.num_threads)

    # The same weights on both sides: aeexp's builder, called twice from the same seed.
    seed_everything(cfg.seed)
    data = load_data(cfg)
    model = build_model(cfg, data.shape)
    seed_everything(cfg.seed)
    seed_model = build_model(cfg, data.shape).to(device)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(model.parameters(), seed_model.parameters()))

    # The seed's side: torchvision reads the same IDX files; per-sample transforms as the seed does.
    ensure_idx_files(args.dataset, args.root, download=False)
    cls = torchvision_class(args.dataset)
    loaders = [
        DataLoader(SeedStyleDataset(cls(args.root, train=train, transform=to_float_image())),
                   batch_size=args.batch_size, shuffle=train, num_workers=args.baseline_workers)
        for train in (True, False)
    ]
    opt = torch.optim.Adam(seed_model.parameters(), lr=cfg.optimizer.lr)

    # FLOPs per training sample: each Linear does in*out multiply-adds = 2*in*out FLOPs forward,
    # backward costs ~2x forward (grads of inputs and of weights): 3 x 2 x (784*64 + 64*784)
    # = 6 x weights ~ 0.6 MFLOP. Validation is forward only: 2 x weights. Biases, activations
    # and the Adam update are ignored (O(weights) per batch, not per sample); so is that
    # autograd skips the first layer's input gradient (the true count is ~5 x weights).
    macs = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    flops_train, flops_val = 6 * macs * len(data.train_images), 2 * macs * len(data.val_images)
    peak = matmul_gflops(device)

    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, model, data, Path(run_dir), device)
        # Warm up both sides with one untimed epoch (thread pools, allocator, kernels for every
        # batch shape incl. the short last one, torch.compile if on), then rewind both to the
        # same starting point so that the validation MSEs stay comparable.
        snapshot = copy.deepcopy(trainer.state_dict())
        trainer.train_epoch(0)
        trainer.validate()
        seed_snapshot = copy.deepcopy((seed_model.state_dict(), opt.state_dict()))
        baseline_train(seed_model, opt, loaders[0], device)
        baseline_validate(seed_model, loaders[1], device)
        seed_model.load_state_dict(seed_snapshot[0])
        opt.load_state_dict(seed_snapshot[1])
        trainer.load_state_dict(snapshot)  # also rewinds torch's RNG, which the shuffles draw from

        rows = {"trainer": [], "dataloader": []}
        for epoch in range(1, args.epochs + 1):
            rows["trainer"].append(timed_epoch(
                lambda: trainer.train_epoch(epoch), lambda: trainer_val_mse(trainer), device))
            rows["dataloader"].append(timed_epoch(
                lambda: baseline_train(seed_model, opt, loaders[0], device),
                lambda: baseline_validate(seed_model, loaders[1], device), device))
            t, b = rows["trainer"][-1], rows["dataloader"][-1]
            print(f"epoch {epoch}: trainer {t['epoch_s']:.3f}s (train {t['train_s']:.3f}s) "
                  f"val_mse {t['val_mse']:.5f} | dataloader {b['epoch_s']:.3f}s (train {b['train_s']:.3f}s) "
                  f"val_mse {b['val_mse']:.5f}")

    # Medians: on a shared machine one epoch can be slowed by a neighbour; the JSON keeps every epoch.
    median = {side: {k: statistics.median(r[k] for r in rs) for k in ("epoch_s", "train_s")}
              for side, rs in rows.items()}
    t, b = median["trainer"], median["dataloader"]
    ratio = {k: b[k] / t[k] for k in t}
    val = {side: rs[-1]["val_mse"] for side, rs in rows.items()}
    val_diff = abs(val["trainer"] - val["dataloader"]) / val["dataloader"]
    gflops = {"train_s": flops_train / t["train_s"] / 1e9, "epoch_s": (flops_train + flops_val) / t["epoch_s"] / 1e9}
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""

    print(f"\n{args.dataset}: {len(data.train_images)} train / {len(data.val_images)} val | model fc "
          f"({macs * 6 / 1e6:.2f} MFLOP per training sample) | batch {args.batch_size} | device {device}{threads}"
          f" | baseline num_workers={args.baseline_workers}", *args.overrides)
    print(f"{f'seconds per epoch (median of {args.epochs})':<34}{'trainer':>10}{'dataloader':>12}{'ratio':>9}")
    for key, label in (("epoch_s", "train + validation"), ("train_s", "train only")):
        print(f"  {label:<32}{t[key]:>10.3f}{b[key]:>12.3f}{ratio[key]:>8.1f}x")
    print(f"val MSE after {args.epochs} epochs: trainer {val['trainer']:.5f}, dataloader {val['dataloader']:.5f}"
          f" (differ by {val_diff:.1%}; should be < 5%)")
    print(f"matmul 2048x2048 fp32: {peak:.1f} GFLOP/s | trainer: {gflops['train_s']:.1f} GFLOP/s train only "
          f"({gflops['train_s'] / peak:.0%} of matmul), {gflops['epoch_s']:.1f} GFLOP/s train + validation")
    print(f"target trainer >= 10x dataloader (train + validation): {'met' if ratio['epoch_s'] >= 10 else 'NOT met'}"
          f" ({ratio['epoch_s']:.1f}x)")

    if args.json:
        figures = {
            "dataset": args.dataset, "device": str(device), "threads": torch.get_num_threads(),
            "epochs": args.epochs, "batch_size": args.batch_size, "baseline_workers": args.baseline_workers,
            "overrides": args.overrides,
            "per_epoch": rows, "median": median, "ratio": ratio, "val_mse": val, "val_mse_rel_diff": val_diff,
            "matmul_gflops": peak, "trainer_gflops": gflops, "flops_per_train_sample": 6 * macs,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
