"""Seconds per epoch on an idle CPU and beside one busy process, with aeexp's default settings.

A shared machine must slow training down, not stall it (see aeexp/threads.py): with torch's
stock OpenMP settings the default fc model went from about 0.5 s per epoch idle to 28 s beside
one other torch process. This script trains the default config (fc model, Fashion-MNIST)
in a child process that imports aeexp first and sets threads as ``run_training`` does, so it
gets what ``python train.py`` gets. The child times epochs (train + validation, median after
one untimed warm-up epoch) idle; then it starts a neighbour process and trains on while that
starts (as other work starts beside a running training: where the threads of both processes
land then decides whether spin-waiting collapses), trains one more untimed epoch once the
neighbour is busy, and times as many epochs beside it. It prints both medians and their
ratio (busy / idle; the target is <= 2.5x on 2 CPU cores). It asserts no timings.

The neighbour is one process that keeps the CPU busy for the whole busy phase:

- ``torch`` (default): small matrix products in a loop, with torch's stock settings (one
  thread per core, OpenMP's default spin-waiting), like a test run or another training
  started without aeexp's defaults; the hardest common neighbour.
- ``python``: a pure-Python loop (one busy core).

``--compare`` measures torch's previous behaviour too (``GOMP_SPINCOUNT=300000``, libgomp's
own default: OpenMP threads spin up to 300,000 rounds before they sleep); beside a ``torch``
neighbour its epochs can take tens of seconds, so that side times ``--compare-epochs``
epochs. Both phases report how much CPU other processes used meanwhile (Linux; the
neighbour's own use taken out): someone else's work makes the figures meaningless, so run
it on an otherwise idle machine.

    python benchmarks/bench_contention.py
    python benchmarks/bench_contention.py --compare --json contention.json
    python benchmarks/bench_contention.py --neighbour python trainer.num_threads=1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

NEIGHBOURS = {  # each says "ready" once it is busy (importing torch takes seconds)
    "torch": "import torch\na, b = torch.randn(512, 784), torch.randn(784, 64)\na @ b\nprint('ready', flush=True)\n"
             "while True:\n    a @ b\n",
    "python": "print('ready', flush=True)\nwhile True:\n    pass\n",
}

SETTINGS = {
    # name: (environment changes for the child, description)
    "default": ({}, "aeexp's defaults"),
    "torch": ({"GOMP_SPINCOUNT": "300000"}, "torch's previous behaviour (OpenMP spin-waits)"),
}


def cpu_ticks() -> tuple[int, int] | None:
    """(all, idle) CPU ticks since boot from /proc/stat (None where there is none)."""
    try:
        with open("/proc/stat") as f:
            values = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return sum(values), values[3] + values[4]


def others_cpu_seconds(before: tuple[int, int] | None, own_before: float) -> float | None:
    """CPU seconds other processes used since ``before`` (this process's own time taken out)."""
    after = cpu_ticks()
    if before is None or after is None:
        return None
    busy = ((after[0] - before[0]) - (after[1] - before[1])) / os.sysconf("SC_CLK_TCK")
    return max(0.0, busy - (own_cpu_seconds() - own_before))


def process_cpu_seconds(pid: int) -> float | None:
    """CPU seconds process ``pid`` has used so far (Linux; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def neighbour_environment() -> dict[str, str]:
    """The environment of a process started without aeexp: no OpenMP wait settings."""
    from aeexp.threads import WAIT_VARIABLES

    return {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}


def worker(args: argparse.Namespace) -> None:
    """The child: train the default config idle, then beside the neighbour; print JSON."""
    import aeexp  # noqa: F401  (first, as train.py: its OpenMP defaults must precede torch)
    from aeexp.threads import WAIT_VARIABLES, configure_cpu_threads

    import torch
    from hydra import compose, initialize_config_dir

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_epoch import timed_epoch, trainer_val_mse

    from aeexp.config import validate
    from aeexp.device import resolve_device
    from aeexp.models.factory import build_model
    from aeexp.training.run import load_data, seed_everything
    from aeexp.training.trainer import Trainer

    overrides = ["model=fc", "dataset=fashion_mnist", "device=cpu", "trainer.progress=false",
                 "trainer.image_every=0", *args.overrides]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    cfg = validate(cfg)
    device = resolve_device(cfg.device.name)
    threads = configure_cpu_threads(cfg.trainer.num_threads)  # as run_training does
    torch.set_flush_denormal(True)
    seed_everything(cfg.seed)
    data = load_data(cfg)
    model = build_model(cfg, data.shape)

    def epochs(trainer: Trainer, first: int, count: int) -> tuple[list[dict[str, float]], float | None]:
        ticks, own = cpu_ticks(), own_cpu_seconds()
        rows = [timed_epoch(lambda e=e: trainer.train_epoch(e), lambda: trainer_val_mse(trainer), device)
                for e in range(first, first + count)]
        return rows, others_cpu_seconds(ticks, own)

    result = {"model": cfg.model.get("name"), "threads": threads,
              "openmp": {k: os.environ[k] for k in WAIT_VARIABLES if k in os.environ}}
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, model, data, Path(run_dir), device)
        epochs(trainer, 1, 1)  # warm-up: thread pool, allocator, kernels for every batch shape
        idle, others = epochs(trainer, 2, args.epochs)
        result.update(idle=idle, idle_others_cpu_s=others)
        neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOURS[args.neighbour]], env=neighbour_environment(),
                                     stdout=subprocess.PIPE, text=True)
        try:
            ready = threading.Event()
            threading.Thread(target=lambda: neighbour.stdout.readline().strip() == "ready" and ready.set(),
                             daemon=True).start()
            # Train on while it starts, as other work starts beside a running training: how the
            # threads of both processes land on the cores then decides whether spinning collapses.
            epoch = 2 + args.epochs
            while not ready.is_set():
                if neighbour.poll() is not None:
                    sys.exit("the neighbour process ended before it was busy")
                epochs(trainer, epoch, 1)
                epoch += 1
            epochs(trainer, epoch, 1)  # warm-up with the neighbour busy all along
            before = process_cpu_seconds(neighbour.pid)
            busy, others = epochs(trainer, epoch + 1, args.epochs)
            after = process_cpu_seconds(neighbour.pid)
            if None not in (others, before, after):
                # what neither this process nor the neighbour used: other people's work
                used = after - before
                result.update(busy_neighbour_cpu_s=used, busy_others_cpu_s=max(0.0, others - used))
            result.update(busy=busy)
        finally:
            neighbour.kill()
            neighbour.wait()
    print(json.dumps(result))


def measure(name: str, args: argparse.Namespace, epochs: int) -> dict:
    """Run the worker in a fresh process with setting ``name``'s environment."""
    env = neighbour_environment()  # start from no wait settings; the child's `import aeexp` decides
    env.update(SETTINGS[name][0])
    command = [sys.executable, __file__, "--worker", "--epochs", str(epochs), "--neighbour", args.neighbour,
               *args.overrides]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the {name} run failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["idle_s"] = statistics.median(row["epoch_s"] for row in result["idle"])
    result["busy_s"] = statistics.median(row["epoch_s"] for row in result["busy"])
    result["ratio"] = result["busy_s"] / result["idle_s"]
    result["val_mse"] = result["idle"][0]["val_mse"]  # after 2 epochs: the same weights whatever the setting
    return result


def main() -> None:
    p = argparse.ArgumentParser(description="seconds per epoch idle and beside one busy process")
    p.add_argument("--epochs", type=int, default=5, help="timed epochs idle and busy each (after a warm-up)")
    p.add_argument("--neighbour", default="torch", choices=sorted(NEIGHBOURS))
    p.add_argument("--compare", action="store_true", help="also measure torch's previous behaviour")
    p.add_argument("--compare-epochs", type=int, default=3, help="timed epochs of --compare (slow when busy)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="more Hydra overrides, e.g. trainer.num_threads=1")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    names = ["default", "torch"] if args.compare else ["default"]
    results = {name: measure(name, args, args.epochs if name == "default" else args.compare_epochs)
               for name in names}

    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"fashion_mnist, model {results['default']['model']}, {os.cpu_count()} CPU cores, "
          f"neighbour: {args.neighbour}, load average after the runs: {load}", *args.overrides)
    print(f"{'seconds per epoch (medians)':<30}{'idle':>8}{'busy':>9}{'ratio':>8}  {'val MSE':>8}* "
          "others' CPU s while idle / busy")
    for name, r in results.items():
        others = " / ".join("n/a" if r.get(f"{phase}_others_cpu_s") is None else f"{r[f'{phase}_others_cpu_s']:.2f}"
                            for phase in ("idle", "busy"))
        print(f"  {name:<8}({len(r['idle'])} + {len(r['busy'])} epochs){r['idle_s']:>11.3f}{r['busy_s']:>9.3f}"
              f"{r['ratio']:>7.2f}x  {r['val_mse']:>8.5f}  {others}")
        print(f"      {SETTINGS[name][1]}: {r['threads']} thread(s), {r['openmp'] or 'no OpenMP variables set'}")
    print("  * after 2 epochs" + ("; both settings give the same (how threads wait changes no arithmetic)"
                                 if len(results) > 1 else ""))
    ratio = results["default"]["ratio"]
    print(f"target busy <= 2.5x idle with default settings: {'met' if ratio <= 2.5 else 'NOT met'} ({ratio:.2f}x)")
    for name, r in results.items():
        for phase in ("idle", "busy"):
            wall, others = sum(row["epoch_s"] for row in r[phase]), r.get(f"{phase}_others_cpu_s")
            if others is not None and others > 0.1 * wall:
                print(f"warning: other processes used {others:.1f} CPU s during the {wall:.1f} s {phase} phase of "
                      f"{name}; its figure is not what it claims to be (rerun on a quieter machine)")

    if args.json:
        figures = {"neighbour": args.neighbour, "overrides": args.overrides, "cpu_count": os.cpu_count(),
                   "load_average": load, "results": results}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
