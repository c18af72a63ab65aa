"""evaluate.py: metrics beside their baselines, figures, sweep tables and bad run directories.

One small linear run on synthetic data serves most tests; the sweep test trains a real
two-run multirun through ``train.py -m`` and evaluates it through ``evaluate.py``.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aeexp.evaluation import check_settings, evaluate_run, find_runs
from aeexp.evaluation.denoising import noise_at
from aeexp.evaluation.probes import knn_accuracy, probe_accuracy
from aeexp.evaluation.semi_supervised import labelled_subset
from aeexp.evaluation.sweep_table import varying_keys
from aeexp.training.run import run_training
from conftest import REPO, small_run

# Cheap settings: the figures are the same kind at any size, only slower.
FAST = ("eval.probe_max_iter=30", "eval.labels_per_class=[5]", "eval.head_steps=20", "eval.progress=false",
        "eval.noise_levels=[0.2]")
# A linear autoencoder: identity code and output, so its best is PCA's subspace.
LINEAR = ("model.code_activation=none", "model.output_activation=none", "model.latent_dim=2",
          "dataset.num_train=1024", "trainer.batch_size=32", "trainer.epochs=100", "optimizer.lr=5e-3",
          "scheduler=cosine", "trainer.image_every=0")


def fast_settings():
    return check_settings(OmegaConf.from_dotlist([o.removeprefix("eval.") for o in FAST]))


def snapshot(folder: Path) -> dict[str, str]:
    """Every file outside eval/ with a hash of its content and its modification time."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() + str(p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*")) if p.is_file() and "eval" not in p.relative_to(folder).parts
    }


def evaluate_py(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("AEEXP_DATA", "HYDRA_FULL_ERROR")}
    return subprocess.run([sys.executable, str(REPO / "evaluate.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def linear_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("linear") / "run"
    threads = torch.get_num_threads()
    try:  # one thread: 3200 tiny steps stall when two threads share a busy 2-core machine
        run_training(small_run(*LINEAR, "trainer.num_threads=1"), run_dir)
    finally:
        torch.set_num_threads(threads)
    return run_dir


@pytest.fixture(scope="module")
def evaluated(linear_run) -> tuple[dict, dict[str, str], dict[str, str]]:
    before = snapshot(linear_run)
    metrics = evaluate_run(linear_run, fast_settings(), "cpu")
    return metrics, before, snapshot(linear_run)


# ---------------------------------------------------------------- metrics and baselines
@pytest.mark.slow  # the linear run: 3200 steps (the inner loop evaluates a topk run below)
def test_linear_autoencoder_comes_within_5_percent_of_pca(evaluated):
    """PCA is the best linear autoencoder: a trained one must land on it (a check of both)."""
    metrics, _, _ = evaluated
    assert metrics["code_size"] == metrics["pca_components"] == 2
    assert abs(metrics["mse_vs_pca"] - 1) < 0.05, (metrics["test_mse"], metrics["pca_mse"])


@pytest.mark.slow
def test_metrics_json_holds_every_figure_in_its_unit(evaluated, linear_run):
    metrics, _, _ = evaluated
    saved = json.loads((linear_run / "eval" / "metrics.json").read_text())
    assert saved["test_mse"] == metrics["test_mse"]
    for key in ("test_mse", "test_sse_per_image", "test_psnr", "test_fvu", "pca_mse", "mse_vs_pca", "test_l0",
                "dead_fraction", "probe_accuracy", "pixel_probe_accuracy", "knn_accuracy", "denoising",
                "semi_supervised", "ssl5_frozen", "ssl5_fine_tuned", "ssl5_scratch"):
        assert key in saved, key
    assert saved["test_sse_per_image"] == pytest.approx(saved["test_mse"] * 28 * 28)
    assert 0 < saved["test_fvu"] < 1
    assert saved["test_fvu"] == pytest.approx(saved["test_mse"] / saved["mean_image_mse"])
    assert saved["test_l0"] == 2 and saved["dead_fraction"] == 0
    assert saved["test_split"] == "512 generated test images" and saved["test_images"] == 512
    assert saved["val_split"] == "256 generated validation images" and saved["val_images"] == 256
    assert saved["selected_on"].startswith("validation (256 generated validation images)")
    assert saved["selected_on"].endswith("the lowest val_mse")
    # The validation figure is the trainer's own: the same images and weights give the same MSE,
    # so evaluation's validation split is exactly the one that selected best.pt.
    trained = json.loads((linear_run / "metrics.json").read_text())
    assert saved["val_mse"] == pytest.approx(trained["best_val_mse"], rel=1e-5)
    assert saved["val_mse"] != saved["test_mse"]
    [row] = saved["denoising"]
    assert row["noise"] == "gaussian" and row["level"] == 0.2
    # Clamping to [0, 1] only shrinks the noise's error below its variance (0.2**2); the 2-D linear
    # code keeps little of the noise, but what it keeps makes it worse than from clean images.
    assert saved["test_mse"] < row["mse"] < row["noisy_mse"] < 0.2**2, (saved["test_mse"], row)
    assert row["psnr"] > row["noisy_psnr"]
    [ssl] = saved["semi_supervised"]
    assert ssl["labels_per_class"] == 5 and ssl["labels"] == 50
    for key in ("frozen", "fine_tuned", "scratch"):
        assert (ssl[key] * 512).is_integer(), (key, ssl[key])  # a fraction of the 512 test images
        assert ssl[key] > 0.15, (key, ssl[key])  # above chance: 10 classes give 0.1 +- 0.013 on 512 images


@pytest.mark.slow
def test_figures_and_tensorboard_go_under_eval(evaluated, linear_run):
    folder = linear_run / "eval"
    for name in ("reconstructions", "latent_scatter", "dictionary", "codes", "denoising"):
        assert (folder / f"{name}.png").stat().st_size > 0, name
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    assert "eval/test_mse" in events.Tags()["scalars"]
    assert {"eval/reconstructions", "eval/latent_scatter", "eval/denoising"} <= set(events.Tags()["images"])


@pytest.mark.slow
def test_evaluation_changes_nothing_outside_eval(evaluated):
    _, before, after = evaluated
    assert before == after


def test_probe_separates_separable_classes_and_not_shuffled_labels():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 4
    labels = torch.randint(4, (1200,), generator=g)
    features = centres[labels] + torch.randn(1200, 16, generator=g)
    train, test = slice(0, 1000), slice(1000, None)
    args = (features[train], labels[train], features[test], labels[test])
    assert probe_accuracy(*args, progress=False) > 0.99
    assert knn_accuracy(*args, progress=False) > 0.99
    shuffled = labels[torch.randperm(1200, generator=g)]
    assert probe_accuracy(features[train], shuffled[train], features[test], shuffled[test], progress=False) < 0.5


def test_labelled_subset_takes_n_per_class():
    labels = torch.arange(10).repeat(30)
    picked = labelled_subset(labels, 7, seed=0)
    assert torch.bincount(labels[picked]).tolist() == [7] * 10
    assert torch.equal(picked, labelled_subset(labels, 7, seed=0))


def test_noise_levels_use_the_run_noise_type_or_gaussian():
    kind, noise = noise_at({"name": "masking", "fraction": 0.25, "value": 0.0}, 0.5, seed=0)
    assert kind == "masking" and noise.fraction == 0.5
    kind, noise = noise_at({"name": "none"}, 0.3, seed=0)
    assert kind == "gaussian" and noise.std == 0.3


@pytest.mark.slow
@pytest.mark.fashion_mnist
def test_pca_reproduces_the_fashion_mnist_reference(tmp_path):
    """PCA at 64 components gives 0.0104 on the Fashion-MNIST test set (the reference figure,
    fitted on the 55,000 training images left after validation is held out)."""
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    from aeexp.data.datasets import load_torchvision
    from aeexp.evaluation.baselines import fit_pca, pca_mse

    data = load_torchvision("fashion_mnist", root=str(tmp_path), download=False)
    assert (len(data.train_images), len(data.val_images), len(data.test_images)) == (55000, 5000, 10000)
    assert pca_mse(fit_pca(data.train_images, 64), data.test_images) == pytest.approx(0.0104, abs=1e-4)


# ------------------------------------------------------------------------------ sweeps
def test_varying_keys_are_the_overrides_that_differ():
    runs = [{"dataset": "synthetic", "model.latent_dim": "8", "sparsity": "topk"},
            {"dataset": "synthetic", "model.latent_dim": "16"}]
    assert varying_keys(runs) == ["model.latent_dim", "sparsity"]


@pytest.mark.slow
def test_comparison_table_over_a_real_multirun(tmp_path):
    sweep = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if k not in ("AEEXP_DATA", "HYDRA_FULL_ERROR")}
    trained = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", "dataset=synthetic", "dataset.num_train=256",
         "dataset.num_val=128", "trainer.epochs=2", "trainer.batch_size=64", "trainer.progress=false", "device=cpu",
         "model.latent_dim=4,8", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert len(find_runs(sweep)) == 2
    result = evaluate_py(f"run_dir={sweep}", "device=cpu", *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    table = (sweep / "comparison.md").read_text().splitlines()
    header, rows = table[2], [line for line in table[4:] if line.startswith("|")]
    assert len(rows) == 2
    assert "model.latent_dim" in header and "test_mse" in header and "dataset" not in header.split("|")[2]
    with open(sweep / "comparison.csv") as handle:
        records = list(csv.DictReader(handle))
    assert sorted(r["model.latent_dim"] for r in records) == ["4", "8"]
    mses = [float(r["test_mse"]) for r in records]
    assert mses == sorted(mses)
    assert header in result.stdout
    for run in find_runs(sweep):
        assert (run / "eval" / "metrics.json").is_file()


# ---------------------------------------------------------------------------- bad input
def _entry_point():
    spec = importlib.util.spec_from_file_location("evaluate_entry", REPO / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _break(run_dir: Path, how: str) -> Path:
    best = run_dir / "checkpoints" / "best.pt"
    if how == "missing":
        return run_dir / "nosuch"
    if how == "no_checkpoint":
        shutil.rmtree(run_dir / "checkpoints")
    elif how == "truncated":
        best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    elif how == "corrupted":
        best.write_bytes(b"not a checkpoint at all\n" * 100)
    elif how == "unregistered_model":
        state = torch.load(best, weights_only=True)
        config = OmegaConf.create(state["config"])
        config.model.name = "nosuch_model"
        state["config"] = OmegaConf.to_yaml(config)
        torch.save(state, best)
    return run_dir


BAD = {
    "missing": "no such directory",
    "no_checkpoint": "no checkpoints/best.pt",
    "truncated": "cannot be read",
    "corrupted": "cannot be read",
    "unregistered_model": "nosuch_model",
}


@pytest.mark.slow
@pytest.mark.parametrize("how", list(BAD))
def test_bad_run_dir_is_one_clear_error_and_changes_nothing(linear_run, tmp_path, how):
    run_dir = _break(shutil.copytree(linear_run, tmp_path / "run", ignore=shutil.ignore_patterns("eval")), how)
    before = snapshot(tmp_path / "run")
    entry = _entry_point()
    cfg = OmegaConf.create({"run_dir": str(run_dir), "dataset_root": None, "device": {"name": "cpu"},
                            "eval": OmegaConf.from_dotlist([o.removeprefix("eval.") for o in FAST])})
    with pytest.raises(entry.ERRORS) as error:
        entry.evaluate(cfg)
    message = str(error.value)
    assert BAD[how] in message and "\n" not in message
    assert snapshot(tmp_path / "run") == before
    assert not (tmp_path / "run" / "eval").exists()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["missing", "truncated"])
def test_evaluate_py_exits_nonzero_with_one_line(linear_run, tmp_path, how):
    run_dir = _break(shutil.copytree(linear_run, tmp_path / "run", ignore=shutil.ignore_patterns("eval")), how)
    result = evaluate_py(f"run_dir={run_dir}", "device=cpu", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output
    assert [line for line in output.splitlines() if line.strip()] == [
        line for line in output.splitlines() if BAD[how] in line
    ], output
    assert not (tmp_path / "run" / "eval").exists()
    assert not any(p.name == "outputs" for p in tmp_path.iterdir())


@pytest.mark.parametrize("overrides", [pytest.param(("model=conv", "model.latent_dim=8"), marks=pytest.mark.slow),
                                       ("sparsity=topk", "sparsity.k=4", "noise=masking")], ids=["conv", "topk_masking"])
def test_other_models_sparsity_and_noise_evaluate(tmp_path, overrides):
    run_training(small_run("trainer.epochs=1", "trainer.image_every=0", *overrides), tmp_path / "run")
    metrics = evaluate_run(tmp_path / "run", fast_settings(), "cpu")
    assert len(metrics["figures"]) == 5
    if "noise=masking" in overrides:
        assert metrics["test_l0"] <= 4 and metrics["denoising"][0]["noise"] == "masking"
    else:
        assert metrics["code_size"] == 8
