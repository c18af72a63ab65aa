"""SIGTERM / SIGINT: stop at a step boundary with last.pt saved; resume equals no interruption."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, sigterm_at_step, sigterm_sweep_after_first_epoch, small_run, sweep_finals

from aeexp.training.interrupts import TrainingInterrupted
from aeexp.training.run import run_training

RUN = ("trainer.epochs=3", "noise=gaussian", "model.encoder=[{out_features:64,activation:relu,dropout:0.2}]")


def weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_an_interrupted_epoch_resumes_where_it_stopped_and_ends_with_the_same_weights(tmp_path, monkeypatch):
    run_training(small_run(*RUN), tmp_path / "straight")

    # step 12: inside epoch 2 (8 batches of 64 per epoch)
    with sigterm_at_step(monkeypatch, 12), pytest.raises(TrainingInterrupted, match="epoch 2 after step 4"):
        run_training(small_run(*RUN), tmp_path / "stopped")

    saved = torch.load(tmp_path / "stopped" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["partial_epoch"]["batches_done"] == 4
    assert json.loads((tmp_path / "stopped" / "metrics.json").read_text())["status"] == "interrupted"

    metrics = run_training(small_run(*RUN, "trainer.resume=true"), tmp_path / "stopped")
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert metrics["val_mse"] == straight["val_mse"] and metrics["train_loss"] == straight["train_loss"]
    for name, tensor in weights(tmp_path / "straight").items():
        assert torch.equal(tensor, weights(tmp_path / "stopped")[name]), name


@pytest.mark.slow
def test_sigterm_to_train_py_saves_last_pt_and_exits_non_zero(tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "train.py", "dataset=synthetic", "dataset.num_train=20000", "dataset.num_val=64",
               "trainer.batch_size=16", "trainer.epochs=50", "device=cpu", "trainer.image_every=0",
               f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while not (run_dir / "metrics.json").exists() and time.time() < deadline:
        time.sleep(0.2)  # the first epoch has finished
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "Traceback" not in output
    assert "trainer.resume=true" in output
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["partial_epoch"] is not None and state["partial_epoch"]["epoch"] == state["epoch"] + 1


SWEEP = ["dataset=synthetic", "dataset.num_train=2048", "dataset.num_val=64", "trainer.batch_size=16",
         "trainer.epochs=25", "device=cpu", "trainer.image_every=0", "trainer.num_threads=1", "model.latent_dim=4,8,12"]
LAUNCHERS = {
    "basic": [],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"],
}


def sweep_command(sweep_dir, launcher, *extra):
    return [sys.executable, "train.py", "-m", *SWEEP, *LAUNCHERS[launcher], f"hydra.sweep.dir={sweep_dir}", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_sigterm_ends_a_sweep_cleanly_and_resume_finishes_it_as_if_uninterrupted(tmp_path, launcher):
    straight = subprocess.run(sweep_command(tmp_path / "straight", launcher), cwd=REPO, capture_output=True,
                              text=True, timeout=300)
    assert straight.returncode == 0, straight.stdout + straight.stderr

    stopped = tmp_path / "stopped"
    partial = sigterm_sweep_after_first_epoch(sweep_command(stopped, launcher), stopped)
    assert len(partial) < 3 or any((m["epoch"] or 0) < 25 for m in partial.values())  # the sweep did stop early
    for job in stopped.iterdir():  # a job that had not started left no folder; a started one kept its place
        if job.is_dir() and not job.name.startswith("."):  # (.submitit/ is the launcher's)
            assert (job / "checkpoints" / "last.pt").exists() or (job / "metrics.json").exists(), job

    resumed = subprocess.run(sweep_command(stopped, launcher, "trainer.resume=true"), cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert sweep_finals(stopped) == sweep_finals(tmp_path / "straight")
