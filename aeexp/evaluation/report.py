"""Evaluate one run directory: every figure, its baseline beside it, files and a summary.

Order of work: load and check everything (nothing is written before the run directory,
its checkpoint and its config have proved good), then the measures, then ``eval/``:
``metrics.json``, the PNGs and a TensorBoard event file. The run's files go under
``<run>/eval/``, so the run's own files are never touched; ``tensorboard --logdir
outputs`` shows the evaluation as a run named ``<run>/eval``. The baselines, which depend
on the data and not the model, are shared by the runs of a sweep and kept on disk under the
run's ``paths.cache_dir`` (``eval.cache``; :mod:`aeexp.evaluation.baseline_cache`).

``eval.level``: ``quick`` measures reconstruction (MSE, SSE, PSNR, FVU) and the code (L0,
dead features) on validation and test, and the ratio to PCA (plus feature recovery where the
data knows its true features: a look at the decoder's weights); ``full`` adds denoising, the
linear probes, kNN, the semi-supervised heads and the figures.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from aeexp.data.images import to_float
from aeexp.evaluation.baseline_cache import BaselineCache
from aeexp.evaluation.baselines import pca_baseline, pca_basis, pixel_probe_baseline
from aeexp.evaluation.denoising import denoising_metrics
from aeexp.evaluation.figures import write_figures
from aeexp.evaluation.loading import EvalData, load_splits
from aeexp.runs import load_run
from aeexp.evaluation.probes import knn_accuracy, probe_accuracy
from aeexp.evaluation.reconstruction import encode_all, reconstruction_metrics
from aeexp.evaluation.semi_supervised import semi_supervised
from aeexp.evaluation.settings import check_against_data
from aeexp.checkpoints import write_json
from aeexp.metrics import RECOVERY_THRESHOLD, model_feature_recovery
from aeexp.models.factory import build_model

log = logging.getLogger(__name__)


def baseline_cache(cfg: DictConfig, settings: DictConfig) -> BaselineCache:
    """The run's baseline cache: on disk under its ``paths.cache_dir`` unless ``eval.cache=false``
    or the run's config predates ``paths`` (then in memory, for this process only)."""
    folder = cfg.get("paths", {}).get("cache_dir") if settings.cache else None
    return BaselineCache(folder)


class Timer:
    """Seconds per section, reported in metrics.json so slow parts are visible."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, compute):
        start = time.perf_counter()
        result = compute()
        self.seconds[name] = round(time.perf_counter() - start, 3)
        return result


def evaluate_run(run_dir: Path | str, settings: DictConfig, device: torch.device | str = "cpu",
                 dataset_root: str | None = None) -> dict[str, Any]:
    """Evaluate ``run_dir``'s ``best.pt`` on the test split at ``settings.level``; write
    ``<run>/eval/``; return the metrics."""
    start = time.perf_counter()
    device = torch.device(device)
    s = settings
    full = s.level == "full"
    timer = Timer()
    run = timer("load_run", lambda: load_run(run_dir, device=device, dataset_root=dataset_root,
                                             trust_targets=s.trust_targets))
    model, cfg = run.model, run.cfg
    data: EvalData = timer("load_data", lambda: load_splits(cfg))  # read once per process: a sweep shares it
    labelled = data.is_image or data.has_classes()  # unlabelled vectors (all 0) have nothing to probe
    if full and labelled:
        check_against_data(s, data.train_labels, data.test_labels)  # eval.knn_k etc. against this data, first
    cache = baseline_cache(cfg, s)
    monitor = _training_monitor(run.run_dir)
    log.info("evaluating %s (best.pt from epoch %d, chosen by %s on validation: %s) on test: %s%s", run.run_dir,
             run.epoch, monitor, data.val_note, data.test_note, "" if full else " (eval.level=quick)")

    metrics: dict[str, Any] = {
        "run_dir": str(run.run_dir), "checkpoint_epoch": run.epoch,
        "selected_on": f"validation ({data.val_note}): best.pt is the epoch with the lowest {monitor}",
        "monitor": monitor, "val_split": data.val_note, "test_split": data.test_note,
        "val_images": len(data.val_images), "test_images": len(data.test_images),
        "train_images": len(data.train_images), "parameters": sum(p.numel() for p in model.parameters()),
        **({} if data.is_image else {"kind": data.kind}),
    }
    val_recon, _ = timer("val_reconstruction", lambda: reconstruction_metrics(
        model, data.val_images, s.batch_size, device, s.progress, split="val"))
    metrics.update(val_recon)
    recon, test_codes = timer("reconstruction", lambda: reconstruction_metrics(
        model, data.test_images, s.batch_size, device, s.progress))
    metrics.update(recon)
    code_size = recon["code_size"]
    if data.ground_truth is not None:  # dataset=sparse_features: the decoder against the true features
        metrics.update(timer("feature_recovery", lambda: model_feature_recovery(model, data.ground_truth, code_size)))
        metrics["true_features"] = len(data.ground_truth)
    if not data.is_image:  # PSNR assumes pixels in [0, 1]; vectors get explained variance instead
        for split in ("val", "test"):
            metrics.pop(f"{split}_psnr", None)
            metrics[f"{split}_explained_variance"] = 1.0 - metrics[f"{split}_fvu"]

    pca = timer("pca", lambda: pca_baseline(cache, data.train_images, data.fingerprint("train_images"),
                                            data.test_images, data.fingerprint("test_images"), code_size, s.seed))
    metrics["pca_mse"], metrics["pca_components"] = float(pca["pca_mse"]), int(pca["pca_components"])
    metrics["pca_sse_per_image"] = metrics["pca_mse"] * data.test_images[0].numel()
    metrics["mse_vs_pca"] = metrics["test_mse"] / metrics["pca_mse"] if metrics["pca_mse"] > 0 else math.inf
    if not data.is_image and metrics["pca_components"] >= math.prod(data.shape):
        metrics["mse_vs_pca"] = None  # every direction kept: PCA reconstructs exactly, there is no baseline
        log.info("vectors: the code (%d features) is at least as wide as the input (%d), so PCA at the code size "
                 "reconstructs exactly (pca_mse %.3g, rounding): no ratio to PCA", code_size, math.prod(data.shape),
                 metrics["pca_mse"])

    if full and data.is_image:
        metrics["denoising"] = timer("denoising", lambda: denoising_metrics(
            model, data.test_images, cfg.noise, list(s.noise_levels), s.batch_size, device, s.seed, s.progress))
    elif full:
        metrics["denoising"] = []
        log.info("vectors: denoising at eval.noise_levels is skipped (its levels are pixel noise)")
    if full and labelled:
        _probes(metrics, model, cfg, data, test_codes, s, device, timer, cache)
    elif full:
        log.info("vectors without labels (all 0): the linear probes, kNN and semi-supervised heads are skipped; "
                 "dataset.labels_path=<labels.npy> gives them labels")
    if cache.reused:
        log.info("baselines reused from %s (computed by an earlier evaluation of the same data and settings): %s",
                 cache.folder, ", ".join(cache.reused))

    out_dir = run.run_dir / "eval"
    out_dir.mkdir(exist_ok=True)
    for old in out_dir.glob("events.out.tfevents.*"):
        old.unlink()  # one evaluation's events at a time, so TensorBoard shows the latest
    writer = SummaryWriter(log_dir=str(out_dir))
    try:
        if full and s.figures:
            basis = pca_basis(cache, data.train_images, data.fingerprint("train_images"), code_size, s.seed)
            pca_images = basis.reconstruct(data.test_images[: s.num_images]).clamp(0, 1).to(device)
            metrics["figures"] = timer("figures", lambda: write_figures(
                model, data, test_codes, pca_images, cfg.noise, s, device, out_dir, writer, run.epoch))
        _log_scalars(writer, metrics, run.epoch)
    finally:
        writer.close()
    metrics["seconds"] = {**timer.seconds, "total": round(time.perf_counter() - start, 3)}
    metrics["settings"] = OmegaConf.to_container(s, resolve=True)  # what these figures were measured with
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def _probes(metrics: dict[str, Any], model, cfg: DictConfig, data: EvalData, test_codes: torch.Tensor, s: DictConfig,
            device: torch.device, timer: Timer, cache: BaselineCache) -> None:
    """Linear probes on codes and on the inputs, kNN, and the semi-supervised heads (labels needed)."""
    train_codes = timer("encode_train", lambda: encode_all(
        model, data.train_images, s.batch_size, device, "encoding the training split", s.progress))
    probe = dict(l2=s.probe_l2, max_iter=s.probe_max_iter, train_size=s.probe_train_size, seed=s.seed,
                 progress=s.progress)
    metrics["probe_accuracy"] = timer("probe", lambda: probe_accuracy(
        train_codes, data.train_labels, test_codes, data.test_labels, desc="linear probe on codes", **probe))
    ids = {name: data.fingerprint(name) for name in ("train_images", "train_labels", "test_images", "test_labels")}
    metrics["pixel_probe_accuracy"] = timer("pixel_probe", lambda: pixel_probe_baseline(
        cache, ids, {k: v for k, v in probe.items() if k != "progress"},
        lambda: probe_accuracy(_pixels(data.train_images), data.train_labels, _pixels(data.test_images),
                               data.test_labels, desc="linear probe on pixels", **probe)))
    metrics["probe_train_size"] = min(s.probe_train_size or len(train_codes), len(train_codes))
    metrics["knn_accuracy"] = timer("knn", lambda: knn_accuracy(
        train_codes, data.train_labels, test_codes, data.test_labels, s.knn_k, progress=s.progress))
    metrics["knn_k"] = int(s.knn_k)

    # What build_model read besides the fresh weights (a top-k bottleneck's k is in no weight and no repr).
    built_from = json.loads(json.dumps(OmegaConf.to_container(OmegaConf.create({
        "model": cfg.model, "sparsity": cfg.get("sparsity"), "batch_size": cfg.trainer.get("batch_size"),
        "input_shape": list(data.shape)}), resolve=True), default=str))

    def scratch_cache(key: dict[str, Any], compute) -> dict[str, float]:
        return cache.get("ssl_scratch", {**ids, **key, "built_from": built_from}, compute,
                         label="semi-supervised scratch classifiers")

    metrics["semi_supervised"] = timer("semi_supervised", lambda: semi_supervised(
        model, lambda: build_model(cfg, data.shape), data, s, device, train_codes, test_codes, scratch_cache))
    for row in metrics["semi_supervised"]:
        for kind in ("frozen", "fine_tuned", "scratch"):
            metrics[f"ssl{row['labels_per_class']}_{kind}"] = row[kind]


def _training_monitor(run_dir: Path) -> str:
    """What training's ``best.pt`` followed (``metrics.json``'s ``monitor``; ``val_mse`` before
    trainer.monitor existed)."""
    try:
        return str(json.loads((run_dir / "metrics.json").read_text()).get("monitor", "val_mse"))
    except (OSError, ValueError, AttributeError):
        return "val_mse"


def _pixels(images: torch.Tensor) -> torch.Tensor:
    return to_float(images).reshape(len(images), -1)


def _log_scalars(writer: SummaryWriter, metrics: dict[str, Any], step: int) -> None:
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            writer.add_scalar(f"eval/{key}", value, step)
    for row in metrics.get("denoising", []):
        writer.add_scalar(f"eval/denoise_mse/{row['noise']}_{row['level']:g}", row["mse"], step)
        writer.add_scalar(f"eval/noisy_input_mse/{row['noise']}_{row['level']:g}", row["noisy_mse"], step)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if 0.01 <= abs(value) < 1000 else f"{value:.3g}" if value else "0"
    return str(value)


def summary_table(metrics: dict[str, Any]) -> str:
    """A plain-text summary: each figure with its baseline beside it."""
    m = metrics
    image = m.get("kind", "images") == "images"
    unit, sample = ("pixel", "image") if image else ("value", "vector")
    lines = [
        f"run {m['run_dir']}  (best.pt, epoch {m['checkpoint_epoch']})",
        f"  selected on {m.get('selected_on', 'validation')}",
        f"  test: {m['test_split']}, {m['test_images']} {sample}s (never used for selection)",
        "",
        f"{'reconstruction':<22}{'val':>10}{'test':>10}{'PCA test':>10}{'ratio':>8}",
        f"{'  MSE per ' + unit:<22}{_fmt(m.get('val_mse')):>10}{_fmt(m['test_mse']):>10}{_fmt(m['pca_mse']):>10}"
        + (f"{m['mse_vs_pca']:>8.3f}" if m["mse_vs_pca"] is not None else f"{'-':>8}"),
        f"{'  SSE per ' + sample:<22}{_fmt(m.get('val_sse_per_image')):>10}{_fmt(m['test_sse_per_image']):>10}"
        f"{_fmt(m['pca_sse_per_image']):>10}",
        *([f"{'  PSNR (dB)':<22}{_fmt(m.get('val_psnr')):>10}{_fmt(m['test_psnr']):>10}"] if image else []),
        f"{'  FVU':<22}{_fmt(m.get('val_fvu')):>10}{_fmt(m['test_fvu']):>10}   (test mean {sample}: MSE "
        f"{_fmt(m['mean_image_mse'])})",
        *([f"{'  explained variance':<22}{_fmt(m.get('val_explained_variance')):>10}"
           f"{_fmt(m['test_explained_variance']):>10}"] if "test_explained_variance" in m else []),
        f"{'code':<22}{m['code_size']:>10} features, test L0 {m['test_l0']:.1f} (val {m.get('val_l0', math.nan):.1f}), "
        f"dead {m['dead_fraction']:.1%}",
        *([f"{'true features':<22}{m['true_features']:>10}, MMCS {m['mmcs']:.4f}, recovered at cosine >= "
           f"{RECOVERY_THRESHOLD:g}: {m['recovered_90']:.1%} (the decoder's columns; any split)"] if "mmcs" in m else []),
    ]
    if m.get("denoising") or (image and "denoising" in m):
        lines += ["", f"{'denoising':<22}{'denoised':>10}{'noisy in':>10}{'PSNR':>15}"]
    for row in m.get("denoising", []):
        lines.append(f"{'  ' + row['noise'] + ' ' + format(row['level'], 'g'):<22}{_fmt(row['mse']):>10}"
                     f"{_fmt(row['noisy_mse']):>10}{row['noisy_psnr']:>7.2f} -> {row['psnr']:.2f}")
    if "probe_accuracy" in m:
        lines += [
            "",
            f"{'features (accuracy)':<22}{'codes':>10}{'pixels' if image else 'inputs':>10}",
            f"{'  linear probe':<22}{m['probe_accuracy']:>10.4f}{m['pixel_probe_accuracy']:>10.4f}"
            f"   ({m['probe_train_size']} training labels)",
            f"{'  kNN, k=' + str(m['knn_k']):<22}{m['knn_accuracy']:>10.4f}",
            "",
            f"{'semi-supervised':<22}{'frozen':>10}{'fine-tuned':>12}{'scratch':>10}",
        ]
    for row in m.get("semi_supervised", []):
        lines.append(f"{'  ' + str(row['labels_per_class']) + ' labels/class':<22}{row['frozen']:>10.4f}"
                     f"{row['fine_tuned']:>12.4f}{row['scratch']:>10.4f}")
    if m.get("settings", {}).get("level") == "quick":
        lines += ["", "eval.level=quick: denoising, probes, kNN, semi-supervised heads and figures not measured "
                  "(eval.level=full measures them)"]
    if "seconds" in m:
        lines += ["", f"evaluated in {m['seconds']['total']:.1f} s; files in {Path(m['run_dir']) / 'eval'}"]
    return "\n".join(lines)
