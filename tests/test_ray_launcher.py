"""Sweeps through ``hydra/launcher=ray`` (aeexp.launchers.ray) on real local Ray clusters.

One cluster (2 CPUs) is started for the module, as the launcher starts one by default
(``start_ray``), and the sweeps join it by address (``hydra.launcher.ray.init.address``). Every test here is slow (a
Ray cluster takes seconds to start); what they share with the other launchers (job folders,
FailureReport, signals, resume) stays covered in the fast loop by tests/test_sweeps.py's and
tests/test_interrupts.py's neighbours, and the thread count of a Ray task by
tests/test_threads.py.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from conftest import REPO, sigterm_sweep_after_first_epoch, sweep_finals
from omegaconf import OmegaConf

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

# 4 jobs of 10 epochs x 32 steps; 1 CPU each, so torch runs on 1 thread (trainer.num_threads is left null)
SWEEP = ["dataset=synthetic", "dataset.num_train=2048", "dataset.num_val=64", "trainer.batch_size=64",
         "trainer.epochs=10", "trainer.image_every=0", "device=cpu", "model.latent_dim=4,8",
         "sparsity=none,l1", "hydra/launcher=ray", "hydra.launcher.ray.remote.num_cpus=1"]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs for the module, started as the launcher starts one when
    no address is given (``start_ray``); its address, for the sweeps to join."""
    from aeexp.launchers.ray import start_ray

    start_ray({"num_cpus": 2, "include_dashboard": False, "log_to_driver": False})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def sweep_command(sweep_dir, *extra):
    return [sys.executable, "train.py", "-m", *SWEEP, f"hydra.sweep.dir={sweep_dir}", *extra]


@pytest.fixture(scope="module")
def straight(cluster, tmp_path_factory):
    """The 4-job sweep run to its end on the module's cluster: its folder and output."""
    sweep_dir = tmp_path_factory.mktemp("straight")
    done = subprocess.run(sweep_command(sweep_dir, f"hydra.launcher.ray.init.address={cluster}"), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    return sweep_dir, done


def test_a_sweep_of_four_jobs_on_a_joined_cluster(straight, cluster):
    sweep_dir, done = straight
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert f"joining the Ray cluster at {cluster}" in output and "4 of 4 runs completed" in output
    jobs = sweep_finals(sweep_dir)
    assert len(jobs) == 4 and {m["status"] for m in jobs.values()} == {"completed"}
    assert {m["epoch"] for m in jobs.values()} == {10}
    names = sorted(jobs)
    assert [n[:2] for n in names] == ["0-", "1-", "2-", "3-"]  # numbered folders, as with the other launchers
    assert any("model.latent_dim=8" in n and "sparsity=l1" in n for n in names)
    for name in names:
        assert (sweep_dir / name / ".hydra" / "config.yaml").is_file()
        assert (sweep_dir / name / "checkpoints" / "last.pt").is_file()
        # trainer.num_threads is null: torch takes the job's Ray CPU share (1 here, against torch's 2 cores)
        assert "torch uses 1 CPU thread(s): this Ray task's CPUs" in (sweep_dir / name / "train.log").read_text()


def test_sigterm_ends_a_ray_sweep_cleanly_and_resume_finishes_it_as_if_uninterrupted(straight, cluster, tmp_path):
    join = f"hydra.launcher.ray.init.address={cluster}"
    stopped = tmp_path / "stopped"
    # exit 143, not 134: ray.init's own SIGTERM handler (an abort) gave way to the sweep's again (start_ray)
    partial = sigterm_sweep_after_first_epoch(sweep_command(stopped, join), stopped, poll=0.05)
    assert len(partial) < 4  # the jobs still queued did not start
    resumed = subprocess.run(sweep_command(stopped, join, "trainer.resume=true"), cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert sweep_finals(stopped) == sweep_finals(straight[0])


def test_a_failing_job_is_reported(cluster, tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "-m", *SWEEP[:3], "trainer.epochs=1", "trainer.image_every=0", "device=cpu",
         "optimizer.lr=1e-3,1e6,-1", "hydra/launcher=ray", f"hydra.launcher.ray.init.address={cluster}",
         f"hydra.sweep.dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert sorted(m["status"] for m in sweep_finals(tmp_path).values()) == ["completed", "failed"]  # lr=1e6 diverged
    assert "1 of 3 runs completed" in output and "diverged" in output
    assert "refused: optimizer.lr: got -1.0" in output  # refused before training: no folder, the sweep's record
    assert not list(tmp_path.glob("2-*")) and not (tmp_path / ".aeexp-refused.jsonl").exists()


def test_a_job_whose_worker_dies_is_a_failed_job_the_sweep_lists(cluster, tmp_path, caplog):
    from aeexp.launchers.ray import lost_job
    from aeexp.sweeps import FailureReport

    @ray.remote(max_retries=0)
    def dies():
        import os

        os._exit(1)

    with pytest.raises(ray.exceptions.RayError) as died:
        ray.get(dies.remote())
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path), "subdir": "0-model.latent_dim=8"},
                                         "job": {"num": 0}}})
    with caplog.at_level(logging.INFO):
        ret = lost_job(config, ["model.latent_dim=8"], died.value)
        assert ret.status.name == "FAILED" and ret.overrides == ["model.latent_dim=8"]
        with pytest.raises(SystemExit) as exited:
            FailureReport().on_multirun_end(config)  # the job left no folder: only the record speaks for it
    assert exited.value.code == 1
    assert "0 of 1 runs completed" in caplog.text
    assert "0-model.latent_dim=8: lost: WorkerCrashedError" in caplog.text


def test_a_job_that_reserved_no_gpu_sees_none(cluster):
    from aeexp.launchers.ray import hide_unreserved_gpus

    @ray.remote(num_gpus=0)
    def visible_devices():
        import os

        hide_unreserved_gpus()
        return os.environ.get("CUDA_VISIBLE_DEVICES")

    assert ray.get(visible_devices.remote()) == ""  # Ray leaves the variable unset for such tasks
