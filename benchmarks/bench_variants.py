"""What a choice costs: training seconds per epoch of config variants against a baseline.

``--group sparsity`` compares each sparsity method with ``sparsity=none`` (budget: +25%),
``--group noise`` each noise transform with ``noise=none`` (budget: +20%), ``--group models``
the conv models with the default fc one. Every variant trains through aeexp's Trainer on
the same data, in one process; epochs of the variants are interleaved so that a drift in
machine speed hits all of them alike, and medians are reported. No timing is asserted: the
figures are for a person to read (and for the README).

    python benchmarks/bench_variants.py --group sparsity
    python benchmarks/bench_variants.py --group noise --epochs 5
    python benchmarks/bench_variants.py --group sparsity --variants none topk kl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import aeexp  # noqa: F401  (first: its OpenMP wait policy must be set before torch loads, as in train.py)
import torch
from bench_epoch import REPO, clock
from hydra import compose, initialize_config_dir

from aeexp.config import validate
from aeexp.device import resolve_device
from aeexp.models.factory import build_model
from aeexp.training.run import load_data, seed_everything
from aeexp.training.trainer import Trainer

# group -> label -> overrides; the first variant of a group is its baseline. AuxK (on by
# default for the selection methods) adds a decoder pass whenever some latent is dead, so
# those methods are measured with and without it.
GROUPS = {"sparsity": {
    "none": ["sparsity=none"],
    "topk": ["sparsity=topk"],
    "topk, no AuxK": ["sparsity=topk", "sparsity.aux_weight=0"],
    "batch_topk": ["sparsity=batch_topk"],
    "batch_topk, no AuxK": ["sparsity=batch_topk", "sparsity.aux_weight=0"],
    "lifetime": ["sparsity=lifetime"],
    "l1": ["sparsity=l1"],
    "kl": ["sparsity=kl"],
}, "noise": {
    "none": ["noise=none"],
    "gaussian": ["noise=gaussian"],
    "masking": ["noise=masking"],
    "salt_pepper": ["noise=salt_pepper"],
}, "models": {
    "fc": ["model=fc"],
    "mlp": ["model=mlp"],
    "conv_fc": ["model=conv_fc"],
    "conv": ["model=conv"],
}}


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
    p = argparse.ArgumentParser(description="training seconds per epoch of config variants vs a baseline")
    p.add_argument("--group", choices=list(GROUPS), default="sparsity")
    p.add_argument("--variants", nargs="+", help="labels within the group (default: all)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--root", default=os.environ.get("AEEXP_DATA", "data"))
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--json", type=Path)
    p.add_argument("overrides", nargs="*", help="more Hydra overrides")
    args = p.parse_args()
    variants = GROUPS[args.group]
    baseline = next(iter(variants))
    methods = [baseline] + [m for m in (args.variants or variants) if m != baseline]

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"dataset={args.dataset}"])
    cfg.dataset.root = args.root
    device = resolve_device(args.device)
    data = load_data(validate(cfg)).to(device)

    seconds: dict[str, list[float]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {m: make_trainer(variants[m], args, data, Path(tmp) / str(i)) for i, m in enumerate(methods)}
        for trainer in trainers.values():  # warm-up epoch, untimed
            trainer.train_epoch(0)
        for epoch in range(1, args.epochs + 1):
            for method, trainer in trainers.items():
                start = clock(device)
                trainer.train_epoch(epoch)
                seconds[method].append(clock(device) - start)

    median = {m: statistics.median(s) for m, s in seconds.items()}
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(f"{args.dataset}, batch {args.batch_size}, device {device}{threads}, median of {args.epochs} epochs")
    print(f"{args.group:<22}{'train s/epoch':>14}{'vs ' + baseline:>12}")
    for method in methods:
        extra = median[method] / median[baseline] - 1
        print(f"{method:<22}{median[method]:>14.3f}{extra:>+12.0%}")
    if args.json:
        args.json.write_text(json.dumps({"seconds": seconds, "median": median, "device": str(device)}, indent=2))


if __name__ == "__main__":
    main()
