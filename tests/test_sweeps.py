"""Sweeps through Hydra's launcher and sweeper plugins, and runs that survive damage."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from conftest import REPO, small_run, tiny_idx_set, write_idx_set

from aeexp.checkpoints import CheckpointError
from aeexp.training.run import run_training

TINY = ["dataset=synthetic", "dataset.num_train=256", "dataset.num_val=64", "trainer.batch_size=64",
        "trainer.epochs=1", "trainer.image_every=0", "device=cpu", "trainer.num_threads=1"]


def sweep(sweep_dir, *overrides, check=True):
    result = subprocess.run([sys.executable, "train.py", "-m", *TINY, f"hydra.sweep.dir={sweep_dir}", *overrides],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def statuses(sweep_dir):
    return {p.parent.name: json.loads(p.read_text())["status"] for p in sweep_dir.glob("*/metrics.json")}


@pytest.mark.slow
def test_joblib_sweep_of_four_jobs_on_two_workers(tmp_path):
    sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model.latent_dim=8,16",
          "sparsity=none,l1")
    done = statuses(tmp_path)
    assert len(done) == 4 and set(done.values()) == {"completed"}
    assert any("model.latent_dim=16" in name and "sparsity=l1" in name for name in done)  # readable names


@pytest.mark.slow
def test_submitit_local_sweep_of_two_jobs(tmp_path):
    sweep(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "model.latent_dim=8,16")
    assert list(statuses(tmp_path).values()) == ["completed", "completed"]


@pytest.mark.slow
def test_rerun_sweep_skips_finished_jobs_and_resumes_the_others(tmp_path):
    sweep(tmp_path, "model.latent_dim=8,16", "trainer.epochs=2")
    finished = next(tmp_path.glob("0-*latent_dim=8*"))
    unfinished = next(tmp_path.glob("1-*latent_dim=16*"))
    kept = (finished / "checkpoints" / "last.pt").read_bytes()
    # Make the second job look interrupted after its first epoch.
    state = torch.load(unfinished / "checkpoints" / "last.pt", weights_only=True)
    first_epoch = json.loads((unfinished / "metrics.json").read_text())
    state["epoch"], first_epoch["epoch"], first_epoch["status"] = 1, 1, "interrupted"
    torch.save(state, unfinished / "checkpoints" / "last.pt")
    (unfinished / "metrics.json").write_text(json.dumps(first_epoch))

    result = sweep(tmp_path, "model.latent_dim=8,16", "trainer.epochs=2", "trainer.resume=true")
    output = result.stdout + result.stderr
    assert (finished / "checkpoints" / "last.pt").read_bytes() == kept
    assert "skipping" in output and "resumed from" in output
    assert statuses(tmp_path) == {finished.name: "completed", unfinished.name: "completed"}
    assert json.loads((unfinished / "metrics.json").read_text())["epoch"] == 2


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_others_and_is_listed(tmp_path):
    result = sweep(tmp_path, "optimizer.lr=1e-3,1e6,-1", check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "Traceback" not in output
    done = statuses(tmp_path)
    # lr=1e6 trained and diverged (failed in its metrics.json); lr=-1 was refused before training,
    # so it left no folder and is listed from the sweep's own record
    assert sorted(done.values()) == ["completed", "failed"]
    assert not list(tmp_path.glob("2-*"))
    assert "1 of 3 runs completed" in output and "diverged" in output and "optimizer.lr: got -1.0" in output
    assert "refused: optimizer.lr: got -1.0" in output
    assert not (tmp_path / ".aeexp-refused.jsonl").exists()


@pytest.mark.slow
def test_rerunning_a_finished_sweep_without_resume_refuses_each_job_and_changes_nothing(tmp_path):
    sweep(tmp_path, "model.latent_dim=8,16")
    before = snapshot(tmp_path)
    result = sweep(tmp_path, "model.latent_dim=8,16", check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output
    assert output.count("already holds a run") >= 2 and "0 of 2 runs completed" in output
    after = snapshot(tmp_path)
    after.pop("multirun.yaml"), before.pop("multirun.yaml")  # Hydra's record of the latest command
    assert after == before  # every job's files byte-identical: completed stays completed
    assert set(statuses(tmp_path).values()) == {"completed"}


@pytest.mark.slow
def test_jobs_differing_only_in_an_unnamed_key_get_their_own_folders(tmp_path):
    data = tmp_path / "data"
    for copy in ("a", "b"):
        write_idx_set(data / copy / "FashionMNIST" / "raw", tiny_idx_set(num_train=40, num_test=10))
    result = subprocess.run(
        [sys.executable, "train.py", "-m", *[o for o in TINY if not o.startswith("dataset")], "dataset=fashion_mnist",
         "dataset.val_size=8", "dataset.download=false", f"dataset.root={data}/a,{data}/b",
         f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    folders = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert [f[:2] for f in folders] == ["0-", "1-"]  # numbered: dataset.root is left out of the names
    assert folders[0][2:100] == folders[1][2:100] and "dataset.root" not in "".join(folders)
    assert set(statuses(tmp_path / "sweep").values()) == {"completed"}


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize(("search", "sparsity"), [("hparams_search=optuna", "none"), ("experiment=search_l1", "l1")])
def test_optuna_search_returns_the_metric_to_the_sweeper(tmp_path, search, sparsity):
    sweep(tmp_path, search, "hydra.sweeper.n_trials=2")
    results = OmegaConf.load(tmp_path / "optimization_results.yaml")
    jobs = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/metrics.json"))]
    assert len(jobs) == 2 and {job["status"] for job in jobs} == {"completed"}
    # what Optuna was told is what the jobs measured: the best trial's value is a job's best_score
    assert results.best_value == min(job["best_score"] for job in jobs)
    assert results.best_value in [job["best_score"] for job in jobs]
    searched = {"optimizer.lr", "model.latent_dim"} | ({"sparsity.weight"} if sparsity == "l1" else set())
    assert set(results.best_params) == searched  # hparams_search=optuna changes the sweeper only
    configs = [OmegaConf.load(p) for p in sorted(tmp_path.glob("*/.hydra/config.yaml"))]
    assert [cfg.sparsity.name for cfg in configs] == [sparsity, sparsity]


def test_truncated_last_checkpoint_gives_one_clear_message_and_best_is_the_way_out(tmp_path):
    run_training(small_run("trainer.epochs=2"), tmp_path)
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"cannot be read.*trainer\.resume_from=best"):
        run_training(small_run("trainer.epochs=3", "trainer.resume=true"), tmp_path)
    metrics = run_training(small_run("trainer.epochs=3", "trainer.resume=true", "trainer.resume_from=best"), tmp_path)
    assert metrics["status"] == "completed" and metrics["epoch"] == 3
    assert (tmp_path / "checkpoints" / "last.pt.damaged").is_file()
    torch.load(last, weights_only=True)


@pytest.mark.slow
def test_truncated_checkpoint_through_train_py_is_one_line(tmp_path):
    run_training(small_run("trainer.epochs=1"), tmp_path)
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    result = subprocess.run([sys.executable, "train.py", *TINY, "trainer.epochs=2", "trainer.resume=true",
                             f"hydra.run.dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    assert "resume_from=best" in output
