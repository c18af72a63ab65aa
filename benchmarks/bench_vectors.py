"""Samples per second on vectors: streamed from shards next to held in memory, same file, one run.

``dataset=vectors`` keeps a set that fits ``dataset.max_memory_mb`` in memory (on the training
device, float16 as stored) and streams a larger one from its shards (seeded shard order, a
shuffle buffer across shards, a background prefetch thread). This script writes ``--rows``
float16 vectors of width ``--dim`` as ``--shards`` .npy shards, then measures both ways on
that same directory:

* ``data only``: the batches alone (``index_batches`` over an epoch order, float32 on the device),
  what the trainer's loop is fed at most;
* ``train epoch``: the Trainer's ``train_epoch`` (forward, loss, backward, Adam step) of a
  top-k sparse autoencoder (``model=fc``, ``--latent`` features, k = ``--k``), the figure the
  target is about: streamed at least 50% of in-memory on 2 CPU cores.

One untimed warm-up epoch each, then ``--repeats`` timed epochs interleaved (memory, stream,
memory, ...) so drift in machine speed hits both alike; medians and the ratio are printed.
The shards are freshly written, so they are read from the page cache (a cold disk is slower).
Other processes on the machine skew CPU figures (README, "Busy machines").

    python benchmarks/bench_vectors.py
    python benchmarks/bench_vectors.py --rows 200000 --dim 512 --shards 8 --json bench.json
    python benchmarks/bench_vectors.py trainer.batch_size=1024     # extra Hydra overrides
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import aeexp  # noqa: F401  (first: its OpenMP wait policy must be set before torch loads, as in train.py)
import numpy as np
import torch
from hydra import compose, initialize_config_dir

from aeexp.config import validate
from aeexp.data.images import epoch_order, index_batches
from aeexp.device import resolve_device
from aeexp.models.factory import build_model
from aeexp.threads import configure_cpu_threads
from aeexp.training.run import load_data, seed_everything
from aeexp.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


def write_shards(folder: Path, rows: int, dim: int, shards: int, seed: int = 0) -> None:
    """float16 vectors with structure (a low-rank part plus noise), as ``shards`` .npy files."""
    g = np.random.default_rng(seed)
    basis = g.standard_normal((64, dim)).astype(np.float32) / 8
    sizes = [rows // shards + (i < rows % shards) for i in range(shards)]
    for i, size in enumerate(sizes):
        part = g.standard_normal((size, 64)).astype(np.float32) @ basis
        part += 0.1 * g.standard_normal((size, dim)).astype(np.float32)
        np.save(folder / f"shard-{i:04d}.npy", part.astype(np.float16))


def config(folder: Path, stream: bool, args, overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[
            "dataset=vectors", f"dataset.path={folder}", f"dataset.stream={str(stream).lower()}",
            "dataset.max_memory_mb=100000", "model=fc", f"model.latent_dim={args.latent}",
            "model.code_activation=none", "model.output_activation=none", "sparsity=topk", f"sparsity.k={args.k}",
            "trainer.batch_size=512", "trainer.progress=false", "trainer.image_every=0", f"device={args.device}",
            "scheduler=none", *overrides])
    return validate(cfg)


def clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--latent", type=int, default=1024)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dir", type=Path, default=None, help="where the shards go (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None)
    args, overrides = parser.parse_known_args()

    configure_cpu_threads(None)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.dir or Path(scratch) / "shards"
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        write_shards(folder, args.rows, args.dim, args.shards)
        print(f"{args.rows} x {args.dim} float16 vectors in {args.shards} .npy shards "
              f"({args.rows * args.dim * 2 / 2**20:.0f} MB) written in {time.perf_counter() - start:.1f} s")

        sides = {}
        for name, stream in (("memory", False), ("stream", True)):
            cfg = config(folder, stream, args, overrides)
            seed_everything(cfg.seed)
            data = load_data(cfg)
            model = build_model(cfg, data.shape)
            trainer = Trainer(cfg, model, data.without_test(), Path(scratch) / f"run-{name}", device)
            sides[name] = trainer
        n = len(sides["memory"].data.train_images)
        assert n == len(sides["stream"].data.train_images)

        def data_only(trainer: Trainer) -> float:
            images = trainer.data.train_images
            order = epoch_order(images, trainer.shuffle_generator, device)
            begin = clock(device)
            for batch in index_batches(images, trainer.settings.batch_size, order):
                batch.sum()  # touch it on the device
            return n / (clock(device) - begin)

        def train_epoch(trainer: Trainer, epoch: int) -> float:
            begin = clock(device)
            trainer.train_epoch(epoch)
            return n / (clock(device) - begin)

        figures: dict[str, dict[str, list[float]]] = {"data only": {}, "train epoch": {}}
        for name, trainer in sides.items():  # warm-up: page cache, allocator, threads
            data_only(trainer)
            train_epoch(trainer, 1)
        for repeat in range(args.repeats):
            for name, trainer in sides.items():
                figures["data only"].setdefault(name, []).append(data_only(trainer))
                figures["train epoch"].setdefault(name, []).append(train_epoch(trainer, repeat + 2))

    print(f"\n{n} training vectors per epoch, batch {sides['memory'].settings.batch_size}, device {device}, "
          f"torch threads {torch.get_num_threads()}; samples/s, median of {args.repeats}")
    print(f"{'':<14}{'in memory':>12}{'streamed':>12}{'streamed / memory':>20}")
    report = {"rows": args.rows, "dim": args.dim, "shards": args.shards, "latent": args.latent, "k": args.k,
              "train_vectors": n, "device": str(device), "threads": torch.get_num_threads()}
    for what, sides_figures in figures.items():
        memory, streamed = (statistics.median(sides_figures[s]) for s in ("memory", "stream"))
        print(f"{what:<14}{memory:>12,.0f}{streamed:>12,.0f}{streamed / memory:>19.0%}")
        report[what] = {"memory": memory, "stream": streamed, "ratio": streamed / memory,
                        "runs": sides_figures}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
