"""Seconds to evaluate a sweep: ``evaluate.py`` at eval.level=quick and full, with a cold and a
warm baseline cache, next to a plain loop that measures the same test MSE by hand.

The issue's targets, on 2 idle CPU cores: a quick evaluation of a 16-run fc sweep in <= 30 s,
a full one in <= 15 s + 5 s per run. This script trains such a sweep (``train.py -m``: code
sizes 16, 32, 64, 128 x two learning rates x two seeds, one epoch each) on Fashion-MNIST when
its files are on the machine (``/usr/share/datasets/fashion-mnist`` or ``--root``), else on
generated images, into a temporary folder; then times whole ``evaluate.py`` commands (Python
start, imports and data loading included, as a user waits for them): quick with an empty
cache, quick again (the baselines now come from ``paths.cache_dir``), full with an empty
cache and full again. The plain loop is what one would write by hand for the quick level's
headline figure, also as its own process: read the data once, and for every run load the
checkpoint (``weights_only``), rebuild the model, run the test split through it for its MSE,
and fit scikit-learn's PCA at each code size once. It prints one table, the targets met or
not, and where the time of each level went (the per-section seconds of every run's
``eval/metrics.json``, summed). It asserts no timings. Other processes on the machine skew
CPU figures badly, so run it on an otherwise idle machine; the load average is printed.

    python benchmarks/bench_evaluation.py                     # build a sweep, time quick and full
    python benchmarks/bench_evaluation.py --levels quick      # quick only (a minute or so)
    python benchmarks/bench_evaluation.py --sweep DIR --json bench.json   # an existing sweep
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
GRID = ("model.latent_dim=16,32,64,128", "optimizer.lr=1e-3,3e-3", "seed=0,1")  # 16 runs


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def run(command: list[str], cwd: Path) -> float:
    """Seconds the command took; its output is shown only if it fails."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return seconds


def build_sweep(folder: Path, root: Path | None, epochs: int) -> Path:
    sweep = folder / "sweep"
    data = ["dataset=fashion_mnist", f"dataset.root={root}"] if root else \
        ["dataset=synthetic", "dataset.num_train=20000", "dataset.num_val=2000", "dataset.num_test=10000"]
    seconds = run([sys.executable, str(REPO / "train.py"), "-m", *data, "model=fc", *GRID, f"trainer.epochs={epochs}",
                   "trainer.progress=false", "trainer.image_every=0", "device=cpu", f"hydra.sweep.dir={sweep}",
                   f"paths.cache_dir={folder / 'cache'}"], folder)
    print(f"trained the sweep ({'Fashion-MNIST' if root else 'generated images'}, {epochs} epoch(s) per run) in "
          f"{seconds:.1f} s: {sweep}")
    return sweep


def runs_of(sweep: Path) -> list[Path]:
    return sorted(p.parent.parent for p in sweep.rglob(".hydra/overrides.yaml"))


def cache_dirs(sweep: Path) -> set[Path]:
    """The runs' paths.cache_dir, from their stored configs."""
    import yaml

    found = set()
    for run_dir in runs_of(sweep):
        config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
        if (config.get("paths") or {}).get("cache_dir"):
            found.add(Path(config["paths"]["cache_dir"]) / "eval_baselines")
    return found


def evaluate(sweep: Path, level: str, cold: bool) -> dict:
    if cold:
        for folder in cache_dirs(sweep):
            shutil.rmtree(folder, ignore_errors=True)
    seconds = run([sys.executable, str(REPO / "evaluate.py"), f"run_dir={sweep}", "device=cpu", f"eval.level={level}",
                   "eval.progress=false"], sweep.parent)
    sections: dict[str, float] = defaultdict(float)
    for run_dir in runs_of(sweep):
        for name, value in json.loads((run_dir / "eval" / "metrics.json").read_text())["seconds"].items():
            sections[name] += value
    return {"seconds": seconds, "sections": dict(sections)}


def plain_loop(sweep: Path) -> None:
    """The quick level's test MSE and PCA baseline by hand, printed as JSON (run as its own process)."""
    import aeexp  # noqa: F401  (its OpenMP settings, as evaluate.py has them)
    import torch
    from omegaconf import OmegaConf
    from sklearn.decomposition import PCA

    from aeexp.config import validate
    from aeexp.models.factory import build_model
    from aeexp.registry import DATASETS

    start = time.perf_counter()
    runs, data, pca_mse, figures = runs_of(sweep), None, {}, {}
    for run_dir in runs:
        state = torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
        cfg = validate(OmegaConf.create(state["config"]))
        if data is None:
            splits = DATASETS.build(cfg.dataset)
            train = splits.train_images.float().div(255).reshape(len(splits.train_images), -1)
            test = splits.test_images.float().div(255)
            data = train, test
        train, test = data
        model = build_model(cfg, tuple(state["input_shape"]))
        model.load_state_dict(state["model"])
        model.eval()
        with torch.no_grad():
            error = sum((model(x)[0] - x).pow(2).sum().item() for x in test.split(2048))
        k = int(cfg.model.latent_dim)
        if k not in pca_mse:
            pca = PCA(n_components=k, svd_solver="covariance_eigh").fit(train.numpy())
            flat = test.reshape(len(test), -1).numpy()
            pca_mse[k] = float(((pca.inverse_transform(pca.transform(flat)) - flat) ** 2).mean())
        figures[run_dir.name] = error / test.numel() / pca_mse[k]
    print(json.dumps({"seconds_inside": time.perf_counter() - start, "runs": len(runs), "mse_vs_pca": figures}))


def main() -> None:
    p = argparse.ArgumentParser(description="evaluate.py on a 16-run sweep: quick and full, cold and warm cache")
    p.add_argument("--sweep", type=Path, help="an existing multirun folder (default: train one in a temporary folder)")
    p.add_argument("--root", type=Path, default=FASHION if (FASHION / "FashionMNIST").is_dir() else None,
                   help="holds FashionMNIST/raw/ (default: /usr/share/datasets/fashion-mnist when present, "
                        "else generated images)")
    p.add_argument("--synthetic", action="store_true", help="generated images even when Fashion-MNIST is there")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--levels", nargs="+", default=["quick", "full"], choices=["quick", "full"])
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--plain-loop", type=Path, help=argparse.SUPPRESS)  # the reference, in its own process
    args = p.parse_args()
    if args.plain_loop:
        plain_loop(args.plain_loop)
        return

    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench_evaluation_") as tmp:
        sweep = args.sweep.resolve() if args.sweep else build_sweep(Path(tmp), None if args.synthetic else args.root,
                                                                     args.epochs)
        n = len(runs_of(sweep))
        timings: dict[str, dict] = {}
        for level in args.levels:
            for state in ("cold", "warm"):
                timings[f"{level}, {state} cache"] = evaluate(sweep, level, state == "cold")
                print(f"  {level}, {state} cache: {timings[f'{level}, {state} cache']['seconds']:.1f} s", flush=True)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, __file__, "--plain-loop", str(sweep)], capture_output=True, text=True,
                                check=True)
        plain = {"seconds": time.perf_counter() - start, **json.loads(result.stdout.strip().splitlines()[-1])}

    targets = {"quick": 30.0, "full": 15.0 + 5.0 * n}
    print(f"\nevaluate.py on a {n}-run fc sweep | {os.cpu_count()} CPUs | load average before {load_before}, "
          f"after {load_average()}")
    print(f"{'':<28}{'seconds':>9}{'per run':>9}{'target':>9}{'vs plain loop':>15}")
    for name, t in timings.items():
        level = name.split(",")[0]
        print(f"  {name:<26}{t['seconds']:>9.1f}{t['seconds'] / n:>9.2f}{targets[level]:>9.0f}"
              f"{t['seconds'] / plain['seconds']:>14.1f}x")
    print(f"  {'plain loop (MSE, PCA)':<26}{plain['seconds']:>9.1f}{plain['seconds'] / n:>9.2f}{'':>9}{1:>14.1f}x")
    for name, t in timings.items():
        if "warm" in name:
            level = name.split(",")[0]
            met = "met" if t["seconds"] <= targets[level] else "NOT met"
            print(f"target {level} <= {targets[level]:.0f} s (warm cache): {met} ({t['seconds']:.1f} s)")
    print("where the time went (seconds; sections summed over the runs' eval/metrics.json):")
    for name, t in timings.items():
        sections = dict(t["sections"])
        inside = sections.pop("total", 0.0)
        top = sorted(sections.items(), key=lambda kv: -kv[1])
        print(f"  {name}: {inside:.1f} in evaluate_run ({', '.join(f'{k} {v:.1f}' for k, v in top)}), "
              f"{t['seconds'] - inside:.1f} outside it (Python start, imports, the table, HParams, sweep pictures)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": n, "load_average_before": load_before, "timings": timings,
                                         "plain_loop": plain, "targets": targets}, indent=2) + "\n")


if __name__ == "__main__":
    main()
