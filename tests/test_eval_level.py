"""eval.level (quick | full) and the baseline cache (aeexp/evaluation/baseline_cache.py).

Two tiny runs on 6x6 synthetic images (so PCA's covariance solver applies: 512 training
images >= 10 x 36 pixels) make a sweep whose baselines are checked against scikit-learn
fitted by hand, computed once, reused from disk by a second evaluation, recomputed when the
data, a setting or the cache file changes, and never unpickled into code.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import aeexp.evaluation.baselines as baselines
import aeexp.evaluation.probes as probes
from aeexp.config import ConfigError
from aeexp.data.images import to_float
from aeexp.evaluation import check_settings, evaluate_run
from aeexp.evaluation.baseline_cache import FOLDER, BaselineCache, fingerprint, forget_memory
from aeexp.evaluation.baselines import pca_baseline, pca_basis
from aeexp.evaluation.loading import load_splits
from aeexp.runs import load_run
from aeexp.training.run import run_training
from conftest import PICKLES, small_run

FAST = dict(probe_max_iter=20, labels_per_class=[5], head_steps=5, progress=False, noise_levels=[0.2],
            scatter_samples=200, code_samples=64, figures=False)  # figures: tests/test_evaluate.py
TINY = ("dataset.height=6", "dataset.width=6", "trainer.epochs=1", "trainer.image_every=0")

# What eval.level=quick measures on images, and nothing else.
QUICK_KEYS = {
    "run_dir", "checkpoint_epoch", "selected_on", "monitor", "val_split", "test_split", "val_images",
    "test_images", "train_images", "parameters",
    *(f"{split}_{key}" for split in ("val", "test") for key in ("mse", "sse_per_image", "psnr", "fvu", "l0")),
    "val_mean_image_mse", "val_dead_fraction", "mean_image_mse", "dead_fraction", "code_size",
    "pca_mse", "pca_components", "pca_sse_per_image", "mse_vs_pca", "seconds", "settings",
}


def settings(**overrides):
    return check_settings({**FAST, **overrides})


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two runs (code sizes 4 and 8) whose config keeps baselines in a cache folder of their own."""
    root = tmp_path_factory.mktemp("sweep")
    runs = []
    for job, dim in enumerate((4, 8)):
        run_training(small_run(*TINY, f"model.latent_dim={dim}", f"paths.cache_dir={root / 'cache'}"),
                     root / str(job))
        runs.append(root / str(job))
    return root, runs


@pytest.fixture
def counted(monkeypatch):
    """Counts of PCA fits and of probe fits on pixels (as opposed to codes), the work the cache saves."""
    calls = {"pca": 0, "pixel_probe": 0}
    fit_pca, probe_accuracy = baselines.fit_pca, probes.probe_accuracy

    def counting_fit(*args, **kwargs):
        calls["pca"] += 1
        return fit_pca(*args, **kwargs)

    def counting_probe(*args, desc="probe", **kwargs):
        calls["pixel_probe"] += "pixels" in desc
        return probe_accuracy(*args, desc=desc, **kwargs)

    monkeypatch.setattr(baselines, "fit_pca", counting_fit)
    monkeypatch.setattr("aeexp.evaluation.report.probe_accuracy", counting_probe)
    forget_memory()  # as a new process: only the disk remembers
    yield calls
    forget_memory()


def reference_pca_mse(run_dir, k: int) -> float:
    """scikit-learn's PCA at ``k`` components, fitted on the run's training split and scored on test."""
    from sklearn.decomposition import PCA

    data = load_splits(load_run(run_dir).cfg)
    flat = [to_float(t).reshape(len(t), -1).double().numpy() for t in (data.train_images, data.test_images)]
    pca = PCA(n_components=k, svd_solver="full").fit(flat[0])
    return float(np.mean((pca.inverse_transform(pca.transform(flat[1])) - flat[1]) ** 2))


def test_quick_has_exactly_the_quick_keys_and_writes_no_pictures(sweep, counted):
    _, (run, _) = sweep
    metrics = evaluate_run(run, settings(level="quick", cache=False), "cpu")
    assert set(metrics) == QUICK_KEYS
    assert metrics["settings"]["level"] == "quick"
    assert not list((run / "eval").glob("*.png"))
    assert metrics["mse_vs_pca"] == pytest.approx(metrics["test_mse"] / metrics["pca_mse"])
    assert counted["pixel_probe"] == 0


def test_second_evaluation_reuses_the_baselines_from_disk(sweep, counted, caplog):
    root, runs = sweep
    caplog.set_level(logging.INFO, logger="aeexp.evaluation.report")
    first = [evaluate_run(run, settings(), "cpu") for run in runs]
    # covariance solver: one fit of every component serves both code sizes; one probe on pixels
    assert counted == {"pca": 1, "pixel_probe": 1}
    assert not [r for r in caplog.records if "reused" in r.getMessage()]
    for metrics, k in zip(first, (4, 8)):
        assert metrics["pca_components"] == k
        assert metrics["pca_mse"] == pytest.approx(reference_pca_mse(runs[0], k), rel=1e-4)
    # the fit, 2 test scores, the pixel probe, and the scratch semi-supervised classifiers of each code size (2)
    assert len(list((root / "cache" / FOLDER).glob("*.pt"))) == 6

    forget_memory()
    caplog.clear()
    second = [evaluate_run(run, settings(level=level), "cpu") for run, level in zip(runs, ("full", "quick"))]
    assert counted == {"pca": 1, "pixel_probe": 1}  # nothing computed again
    for a, b in zip(first, second):
        for key in ("pca_mse", "pca_components", "mse_vs_pca"):
            assert a[key] == b[key], key
    assert first[0]["pixel_probe_accuracy"] == second[0]["pixel_probe_accuracy"]
    reused = [r.getMessage() for r in caplog.records if "reused" in r.getMessage()]
    assert len(reused) == 2 and str(root / "cache" / FOLDER) in reused[0]  # one line per run that read the disk

    forget_memory()
    evaluate_run(runs[1], settings(level="quick", cache=False), "cpu")
    assert counted["pca"] == 2  # eval.cache=false: the disk is not read


def test_a_corrupt_entry_is_computed_again_with_one_warning(sweep, counted, caplog):
    root, runs = sweep
    before = evaluate_run(runs[0], settings(level="quick"), "cpu")
    entries = sorted((root / "cache" / FOLDER).glob("*.pt"))
    assert entries
    for path in entries:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated, as by a full disk
    forget_memory()
    calls = dict(counted)
    caplog.set_level(logging.WARNING)
    after = evaluate_run(runs[0], settings(level="quick"), "cpu")
    assert after["pca_mse"] == before["pca_mse"]
    assert counted["pca"] == calls["pca"] + 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("unreadable" in w and "\n" not in w for w in warnings), warnings
    forget_memory()
    caplog.clear()
    evaluate_run(runs[0], settings(level="quick"), "cpu")  # rewritten whole: read back without a warning
    assert counted["pca"] == calls["pca"] + 1 and not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_changed_data_or_settings_miss_the_cache(tmp_path, counted):
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (100, 1, 6, 6), dtype=torch.uint8, generator=g)  # 100 < 10 x 36: a fit per size
    test = torch.randint(0, 256, (50, 1, 6, 6), dtype=torch.uint8, generator=g)
    cache = BaselineCache(tmp_path)

    def score(train, test, k=3, seed=0):
        return pca_baseline(cache, train, fingerprint(train), test, fingerprint(test), k, seed)["pca_mse"]

    first = score(train, test)
    assert counted["pca"] == 1 and score(train, test) == first and counted["pca"] == 1
    changed = train.clone()
    changed[0, 0, 0, 0] ^= 1  # one pixel of one training image
    assert score(changed, test) != first and counted["pca"] == 2
    other_test = test.clone()
    other_test[-1, 0, -1, -1] ^= 1
    assert score(train, other_test) != first and counted["pca"] == 2  # the same fit, scored on other images
    score(train, test, k=4)
    score(train, test, seed=1)
    assert counted["pca"] == 4
    forget_memory()
    assert score(train, test) == first and counted["pca"] == 4  # from disk
    basis = pca_basis(cache, train, fingerprint(train), 3, 0)
    assert basis.mse(test) == pytest.approx(first) and basis.components.shape == (3, 36)


def test_the_whole_spectrum_gives_scikit_learns_pca_at_every_size():
    from sklearn.decomposition import PCA

    g = torch.Generator().manual_seed(1)
    train = torch.randint(0, 256, (400, 1, 6, 6), dtype=torch.uint8, generator=g)  # covariance_eigh regime
    test = torch.randint(0, 256, (60, 1, 6, 6), dtype=torch.uint8, generator=g)
    cache = BaselineCache(None)
    x_test = to_float(test).reshape(60, -1).numpy()
    for k in (1, 5, 36, 50):
        got = pca_basis(cache, train, fingerprint(train), k, 0)
        pca = PCA(n_components=min(k, 36)).fit(to_float(train).reshape(400, -1).numpy())
        expected = pca.inverse_transform(pca.transform(x_test))
        assert got.components.shape == (min(k, 36), 36)
        assert np.abs(got.reconstruct(test).reshape(60, -1).numpy() - expected).max() < 1e-4


@pytest.mark.parametrize("payload", list(PICKLES))
def test_a_cache_file_that_would_run_code_is_refused(tmp_path, payload, caplog):
    site = {"victim": tmp_path / "victim", "created": tmp_path / "created"}
    cache = BaselineCache(tmp_path)
    cache.get("demo", {"x": 1}, lambda: {"value": 1.0})
    [path] = (tmp_path / FOLDER).glob("demo-*.pt")
    torch.save({"key": "anything", "values": PICKLES[payload](site)}, path)
    forget_memory()
    caplog.set_level(logging.WARNING)
    assert cache.get("demo", {"x": 1}, lambda: {"value": 2.0}) == {"value": 2.0}
    assert not site["victim"].exists() and not site["created"].exists()
    assert len([r for r in caplog.records if "unreadable" in r.getMessage()]) == 1
    forget_memory()


def test_a_cache_folder_that_cannot_be_written_costs_one_warning(tmp_path, caplog):
    (tmp_path / FOLDER).write_text("a file where the cache folder should be")
    caplog.set_level(logging.WARNING)
    forget_memory()
    for run in range(2):  # each run of a sweep makes its own BaselineCache
        cache = BaselineCache(tmp_path)
        assert cache.get("demo", {"run": run}, lambda: {"value": float(run)}) == {"value": float(run)}
    [warning] = [r.getMessage() for r in caplog.records]
    assert "cannot be written" in warning and "\n" not in warning
    forget_memory()


@pytest.mark.parametrize("value", ["fast", "QUICK", 1, None])
def test_bad_level_is_one_line_naming_key_value_and_choices(value):
    with pytest.raises(ConfigError) as error:
        check_settings(OmegaConf.create({"level": value}))
    message = str(error.value)
    assert message.startswith("eval.level: got ") and "quick, full" in message and "\n" not in message


def test_full_is_the_default_and_quick_runs_no_full_checks(sweep):
    """eval.knn_k too large for the data is refused at full level, and irrelevant at quick."""
    _, (run, _) = sweep
    assert check_settings({}).level == "full"
    with pytest.raises(ConfigError, match="eval.knn_k"):
        evaluate_run(run, settings(knn_k=100000, cache=False), "cpu")
    metrics = evaluate_run(run, settings(knn_k=100000, level="quick", cache=False), "cpu")
    assert math.isfinite(metrics["test_mse"])
