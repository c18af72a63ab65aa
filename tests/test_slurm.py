"""SLURM through hydra-submitit-launcher: the example config's sbatch script, written by the
plugin's own code up to the point of submitting, and the one line without SLURM."""

from __future__ import annotations

import logging
import shutil

import pytest
from cli_runner import run_cli
from conftest import REPO
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

submitit = pytest.importorskip("submitit")

from aeexp.config import ConfigError  # noqa: E402
from aeexp.sweeps import FailureReport, check_launcher_available  # noqa: E402


class Submitted(Exception):
    """Raised where submitit would call sbatch, carrying the script it would submit."""


def composed(tmp_path, *overrides):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3", job_name="train"):
            return compose("config", overrides=["dataset=synthetic", f"hydra.sweep.dir={tmp_path}", *overrides],
                           return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def sbatch_script(cfg, jobs, monkeypatch):
    """The sbatch script the SLURM launcher writes for ``jobs`` (lists of overrides), never submitted."""
    from submitit.slurm.slurm import SlurmExecutor

    def capture(executor, command):
        raise Submitted(executor._make_submission_file_text(command, "uid"))

    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")  # submitit looks for srun
    monkeypatch.setattr(SlurmExecutor, "_submit_command", capture)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=lambda cfg: None, config=cfg)
    with pytest.raises(Submitted) as submitted:
        launcher.launch(jobs, initial_job_idx=0)
    return str(submitted.value), launcher


def test_slurm_example_becomes_the_sbatch_flags_it_names(tmp_path, monkeypatch):
    cfg = composed(tmp_path, "hydra/launcher=slurm_example", "hydra.launcher.partition=long",
                   "hydra.launcher.array_parallelism=2")
    script, launcher = sbatch_script(cfg, [["model.latent_dim=16"], ["model.latent_dim=32"], ["sparsity=l1"]],
                                     monkeypatch)
    flags = {line for line in script.splitlines() if line.startswith("#SBATCH")}
    assert {"#SBATCH --partition=long", "#SBATCH --time=240", "#SBATCH --gpus-per-node=1",
            "#SBATCH --cpus-per-task=8", "#SBATCH --ntasks-per-node=1", "#SBATCH --nodes=1", "#SBATCH --mem=32GB",
            "#SBATCH --requeue", "#SBATCH --signal=USR2@120", "#SBATCH --job-name=train"} <= flags
    assert "#SBATCH --array=0-2%2" in flags  # three jobs, one array, at most array_parallelism=2 at once
    assert "export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK" in script.split("# setup", 1)[1]
    assert f"#SBATCH --output={tmp_path}/.submitit/%A_%a/%A_%a_0_log.out" in flags  # logs in the sweep folder
    assert launcher.params["max_num_timeout"] == 3  # requeues after a timeout


def test_a_slurm_sweep_without_slurm_is_one_line_before_anything_is_written(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    for choice in ("submitit_slurm", "slurm_example"):
        cfg = composed(tmp_path, f"hydra/launcher={choice}")
        with pytest.raises(ConfigError, match=rf"hydra/launcher: got '{choice}', but SLURM's sbatch and srun are not"):
            check_launcher_available(cfg)
        with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exited:
            FailureReport().on_multirun_start(cfg)
        assert exited.value.code == 2 and "hydra/launcher=submitit_local, joblib or ray" in caplog.text
    assert list(tmp_path.iterdir()) == []
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    check_launcher_available(OmegaConf.create({"hydra": {"launcher": {"_target_": joblib}}}))  # needs no SLURM
    check_launcher_available(OmegaConf.create({"hydra": {}}))


@pytest.mark.slow  # a sweep's start through train.py; the check itself stays in the fast loop (above)
@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="this machine has SLURM")
def test_train_py_with_submitit_slurm_here_says_so_in_one_line(tmp_path):
    code, output = run_cli("train.py", ["-m", "hydra/launcher=submitit_slurm", "trainer.epochs=1", "dataset=synthetic",
                                        f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert code == 2 and "Traceback" not in output, output
    assert "got 'submitit_slurm', but SLURM's sbatch and srun are not on this machine's PATH" in output
    assert not (tmp_path / "sweep").exists()
