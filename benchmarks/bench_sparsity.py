"""What each sparsity method costs: training seconds per epoch against ``sparsity=none``.

The budget (issue: sparsity) is at most 25% extra epoch time over ``none`` on the default
fc model. Every method trains the same model from the same initial weights through aeexp's
Trainer on the same data, in one process; epochs of the methods are interleaved so that a
drift in machine speed hits all of them alike, and medians are reported. No timing is
asserted: the figures are for a person to read (and for the README).

    python benchmarks/bench_sparsity.py
    python benchmarks/bench_sparsity.py --variants none topk kl --epochs 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import torch
from bench_epoch import REPO, clock
from hydra import compose, initialize_config_dir

from aeexp.config import validate
from aeexp.training.device import resolve_device
from aeexp.training.run import build_model, load_data, seed_everything
from aeexp.training.trainer import Trainer

# label -> overrides. AuxK (on by default for the selection methods) adds a decoder pass
# whenever some latent is dead, so those methods are measured with and without it.
VARIANTS = {
    "none": ["sparsity=none"],
    "topk": ["sparsity=topk"],
    "topk, no AuxK": ["sparsity=topk", "sparsity.aux_weight=0"],
    "batch_topk": ["sparsity=batch_topk"],
    "batch_topk, no AuxK": ["sparsity=batch_topk", "sparsity.aux_weight=0"],
    "lifetime": ["sparsity=lifetime"],
    "l1": ["sparsity=l1"],
    "kl": ["sparsity=kl"],
}


def make_trainer(variant: list[str], args, data, run_dir: Path) -> Trainer:
    overrides = [
        "model=fc", f"dataset={args.dataset}", f"device={args.device}", *variant,
        "scheduler=none", "trainer.progress=false", "trainer.image_every=0",
        f"trainer.batch_size={args.batch_size}", *args.overrides,
    ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    cfg.dataset.root = args.root
    cfg = validate(cfg)
    seed_everything(cfg.seed)
    model = build_model(cfg, data.shape)
    return Trainer(cfg, model, data, run_dir, resolve_device(cfg.device.name))


def main() -> None:
    p = argparse.ArgumentParser(description="training seconds per epoch of each sparsity method vs none")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--root", default=os.environ.get("AEEXP_DATA", "data"))
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--json", type=Path)
    p.add_argument("overrides", nargs="*", help="more Hydra overrides")
    args = p.parse_args()
    methods = ["none"] + [m for m in args.variants if m != "none"]

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"dataset={args.dataset}"])
    cfg.dataset.root = args.root
    device = resolve_device(args.device)
    data = load_data(validate(cfg)).to(device)

    seconds: dict[str, list[float]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {m: make_trainer(VARIANTS[m], args, data, Path(tmp) / str(i)) for i, m in enumerate(methods)}
        for trainer in trainers.values():  # warm-up epoch, untimed
            trainer.train_epoch(0)
        for epoch in range(1, args.epochs + 1):
            for method, trainer in trainers.items():
                start = clock(device)
                trainer.train_epoch(epoch)
                seconds[method].append(clock(device) - start)

    median = {m: statistics.median(s) for m, s in seconds.items()}
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(f"{args.dataset}, model fc, batch {args.batch_size}, device {device}{threads}, "
          f"median of {args.epochs} epochs")
    print(f"{'sparsity':<22}{'train s/epoch':>14}{'vs none':>10}")
    for method in methods:
        extra = median[method] / median["none"] - 1
        print(f"{method:<22}{median[method]:>14.3f}{extra:>+10.0%}")
    if args.json:
        args.json.write_text(json.dumps({"seconds": seconds, "median": median, "device": str(device)}, indent=2))


if __name__ == "__main__":
    main()
