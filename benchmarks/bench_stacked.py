"""Many small runs in one process: N fc configs (learning rate x seed) trained stacked
(aeexp.stacked, what ``hydra/launcher=stacked`` does) against the same N through the normal
path one after another (aeexp.training.run.run_training, what the basic launcher does per
job). Both write every file a run writes (checkpoints, metrics.json, TensorBoard); the
whole runs are timed, data loading included. No timing is asserted: the figures are for a
person to read (and for the README).

    python benchmarks/bench_stacked.py                      # 8 configs, CPU: stacked vs sequential
    python benchmarks/bench_stacked.py --device cuda        # 16 configs stacked vs one alone
    python benchmarks/bench_stacked.py --json figures.json  # the figures as JSON too

Targets: on 2 CPU cores, stacked at least 1.5x faster than sequential; on a GPU, 16 stacked
configs in less than 3x the time of one alone.

Figures (2 CPU cores shared with other work, load 1.5-4.6, so wide ranges; before = the
stacked code before aeexp/stacked/optim.py, measured alternately in the same minutes):
default settings 1.26-1.31x before, 1.52-2.77x after (stacked 7.5-8.5 s -> 3.9-6.1 s, its
CPU time 4.96 -> 3.73 s); ``--batch-size 128 --latent-dim 32`` 1.82-2.34x before, 1.79-2.40x
after. What bounds the stacked time at the default settings: each member's config check
(``aeexp.config.validate``, ~0.15 s a member, a quarter of the total, paid alike by a lone
run), the stacked forward and backward (about half: batch 512 keeps 2 cores busy, so stacking
saves per-operation costs, not arithmetic) and each member's end of epoch (validation, the
checkpoint's state, files). Not yet measured on a GPU after these changes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import aeexp  # noqa: F401  (first: its OpenMP wait policy must be set before torch loads, as in train.py)
from bench_epoch import REPO
from hydra import compose, initialize_config_dir

from aeexp.stacked.members import DataCache, prepare_member
from aeexp.stacked.training import StackedTraining
from aeexp.training.run import run_training

LRS = (1e-3, 3e-3, 1e-4, 3e-4)


def configs(args) -> list:
    base = ["dataset=synthetic", f"dataset.num_train={args.num_train}", "dataset.num_val=1024",
            f"model.latent_dim={args.latent_dim}", f"trainer.epochs={args.epochs}", f"trainer.batch_size={args.batch_size}",
            "trainer.image_every=0", "trainer.progress=false", "scheduler=none", f"device={args.device}"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return [compose("config", base + [f"optimizer.lr={LRS[i % len(LRS)]}", f"seed={i // len(LRS)}"])
                for i in range(args.configs)]


def stacked(cfgs, root: Path) -> float:
    start = time.perf_counter()
    data = DataCache()
    members = [prepare_member(cfg, root / f"stacked{i}", data) for i, cfg in enumerate(cfgs)]
    StackedTraining(members).fit()
    assert all(isinstance(m.outcome, dict) and m.outcome["status"] == "completed" for m in members)
    return time.perf_counter() - start


def sequential(cfgs, root: Path) -> float:
    start = time.perf_counter()
    for i, cfg in enumerate(cfgs):
        run_training(cfg, root / f"alone{i}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--configs", type=int, default=None, help="default: 8 on cpu, 16 on cuda")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-train", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--latent-dim", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()
    args.configs = args.configs or (8 if args.device == "cpu" else 16)
    cfgs = configs(args)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sequential(cfgs[:1], root / "warmup")  # first-call costs (imports, allocator) out of both timings
        together = stacked(cfgs, root)
        setting = (f"{args.configs} fc configs (lr x seed), {args.epochs} epochs of {args.num_train} synthetic samples, "
                   f"batch {args.batch_size}, latent {args.latent_dim}, {args.device}")
        print(setting)
        figures = {"setting": setting, "configs": args.configs, "stacked_seconds": together}
        if args.device == "cpu":
            apart = sequential(cfgs, root)
            figures.update(sequential_seconds=apart, speedup=apart / together)
            print(f"sequential (normal path, one after another): {apart:.2f} s")
            print(f"stacked (one process, one stacked model):     {together:.2f} s")
            print(f"stacked is {apart / together:.2f}x faster (target >= 1.5x)")
        else:
            one = sequential(cfgs[:1], root / "one")
            figures.update(one_alone_seconds=one, ratio=together / one)
            print(f"one config alone (normal path): {one:.2f} s")
            print(f"{args.configs} configs stacked:           {together:.2f} s")
            print(f"stacked takes {together / one:.2f}x the time of one alone (target < 3x)")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
