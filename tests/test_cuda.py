"""The CUDA path: placement, mixed precision, compile, noise and sparsity on the device.

Every test here is skipped where CUDA is not available (CI has no GPU); ``benchmarks/gpu.sh``
runs them on a GPU machine along with the benchmarks whose figures go into the README. They
check what the CPU tests cannot: nothing silently left on (or moved to) the CPU, fp16's loss
scaling and bf16's autocast training to finite, decreasing losses, ``device.compile=true``
matching eager training, and a run trained on the GPU loading and evaluating on the CPU.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aeexp.config import validate
from aeexp.models.factory import build_model
from aeexp.registry import NOISE, SPARSITY
from aeexp.training.run import load_data, run_training, seed_everything
from aeexp.training.trainer import Trainer
from conftest import REPO, compose, event_scalars, small_run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = ("device=cuda",)


def history(run_dir: Path, tag: str = "val/mse") -> list[float]:
    """A scalar's value per epoch, as TensorBoard reads it (a resumed run's event files merged)."""
    by_step = event_scalars(run_dir)[tag]
    return [by_step[step] for step in sorted(by_step)]


def test_trainer_puts_model_data_and_generators_on_the_gpu(tmp_path):
    cfg = validate(small_run(*CUDA, "trainer.epochs=1"))
    seed_everything(cfg.seed)
    data = load_data(cfg)
    trainer = Trainer(cfg, build_model(cfg, data.shape), data, tmp_path, torch.device("cuda"))
    assert all(p.device.type == "cuda" for p in trainer.model.parameters())
    assert trainer.data.train_images.device.type == "cuda"
    assert trainer.data.val_images.device.type == "cuda"
    assert trainer.fixed_batch.device.type == "cuda"
    train = trainer.train_epoch(0)
    assert all(np.isfinite(v) for v in train.values())
    assert np.isfinite(trainer.validate()["val_mse"])


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_mixed_precision_trains_to_finite_falling_losses(tmp_path, precision):
    run_training(small_run(*CUDA, f"device.precision={precision}", "trainer.epochs=3"), tmp_path)
    val = history(tmp_path)
    assert all(np.isfinite(val)) and val[-1] < val[0]
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")
    scaler = state.get("scaler") or {}
    if precision == "fp16":  # loss scaling is on: its scale is saved to resume from
        assert scaler and scaler.get("scale", 0) > 0
    else:
        assert not scaler or not scaler.get("scale")


def test_fp16_resume_equals_an_uninterrupted_run(tmp_path):
    args = (*CUDA, "device.precision=fp16")
    run_training(small_run(*args, "trainer.epochs=3"), tmp_path / "whole")
    run_training(small_run(*args, "trainer.epochs=2"), tmp_path / "parts")
    run_training(small_run(*args, "trainer.epochs=3", "trainer.resume=true"), tmp_path / "parts")
    np.testing.assert_allclose(history(tmp_path / "parts"), history(tmp_path / "whole"), rtol=1e-5)


def test_compiled_model_trains_like_the_eager_one(tmp_path):
    run_training(small_run(*CUDA, "trainer.epochs=2"), tmp_path / "eager")
    run_training(small_run(*CUDA, "trainer.epochs=2", "device.compile=true"), tmp_path / "compiled")
    np.testing.assert_allclose(history(tmp_path / "compiled"), history(tmp_path / "eager"),
                               rtol=1e-3)


@pytest.mark.parametrize("noise", ["gaussian", "masking", "salt_pepper"])
def test_noise_is_drawn_on_the_batch_device(noise):
    transform = NOISE.build(compose(f"noise={noise}").noise)
    x = torch.rand(64, 1, 28, 28, device="cuda")
    noisy = transform(x, transform.val_generator(x.device))
    again = transform(x, transform.val_generator(x.device))
    assert noisy.device.type == "cuda" and noisy.shape == x.shape
    assert torch.equal(noisy, again)  # a fixed-seed CUDA generator: the same validation noise each time
    assert not torch.equal(noisy, x)


@pytest.mark.parametrize("method", ["topk", "batch_topk", "l1", "kl", "lifetime"])
def test_sparsity_runs_on_the_gpu_and_top_k_routes_gradients_to_kept_entries(method):
    bottleneck = SPARSITY.build(compose(f"sparsity={method}").sparsity).cuda().train()
    if hasattr(bottleneck, "bind"):
        bottleneck.bind(64, 32)
    z = torch.randn(32, 64, device="cuda", requires_grad=True)
    code = bottleneck(z)
    assert code.device.type == "cuda"
    code.sum().backward()
    if method == "topk":
        kept = code.detach() != 0
        assert torch.all(z.grad[~kept] == 0) and torch.all(z.grad[kept] == 1)


def test_streamed_vectors_train_on_the_gpu(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        np.save(folder / f"part{i}.npy", rng.standard_normal((400, 32)).astype(np.float16))
    run_training(compose(*CUDA, "dataset=vectors", f"dataset.path={folder}", "dataset.stream=true",
                         "trainer.batch_size=64", "trainer.progress=false",
                         "model=sae", "model.latent_dim=64", "sparsity=topk", "sparsity.k=4", "trainer.epochs=2"),
                 tmp_path / "run")
    assert all(np.isfinite(history(tmp_path / "run")))


def test_a_gpu_run_evaluates_on_the_gpu_and_on_the_cpu(tmp_path):
    run = tmp_path / "run"
    run_training(small_run(*CUDA, "trainer.epochs=1", "dataset.num_test=256"), run)
    from aeexp.runs import load_run

    loaded = load_run(run, device="cpu")
    assert all(p.device.type == "cpu" for p in loaded.model.parameters())
    for device in ("cuda", "cpu"):
        done = subprocess.run([sys.executable, str(REPO / "evaluate.py"), f"run_dir={run}", f"device={device}",
                               "eval.figures=false", "eval.progress=false", "eval.labels_per_class=[10]",
                               "eval.head_steps=20"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert (run / "eval" / "metrics.json").exists()
