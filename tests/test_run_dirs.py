"""No finished run is ever lost or overwritten: what counts as an existing run, refusals
that change nothing on disk (``.hydra/`` and ``train.log`` included), resume refusals, a
full disk, and resume with settings that differ from the checkpoint's."""

from __future__ import annotations

import errno
import json
import shutil

import pytest
import torch
from cli_runner import run_cli, run_many
from conftest import inner_loop, small_run

from aeexp.config import ConfigError
from aeexp import checkpoints as files
from aeexp.training.run import run_training

TINY = ["dataset=synthetic", "dataset.num_train=256", "dataset.num_val=64", "trainer.batch_size=64",
        "trainer.epochs=1", "trainer.image_every=0", "device=cpu", "trainer.num_threads=1"]


def tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run finished by train.py (with .hydra/ and train.log), to copy and damage."""
    work = tmp_path_factory.mktemp("finished")
    code, output = run_cli("train.py", [*TINY, f"hydra.run.dir={work / 'run'}"], work)
    assert code == 0, output
    return work / "run"


def copy_of(finished, tmp_path, keep=None):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    if keep is not None:  # leave only these results (and .hydra/, train.log)
        for path in [run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt", run / "metrics.json",
                     *run.glob("events.out.tfevents.*")]:
            if path.name not in keep and not (path.name.startswith("events.") and "events" in keep):
                path.unlink()
    return run


def refused(tmp_path, run, *args):
    """Run train.py into ``run``; it must refuse with one line and change nothing there."""
    before = tree(run)
    code, output = run_cli("train.py", [*TINY, f"hydra.run.dir={run}", *args], tmp_path)
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2, output
    assert len(lines) == 1 and "Traceback" not in output, output
    assert tree(run) == before  # .hydra/, train.log, checkpoints: byte for byte
    return lines[0]


@pytest.mark.parametrize("keep", inner_loop([(["best.pt"],), (["metrics.json"],), (["last.pt"],), (["events"],)], 1),
                         ids=["only_best", "only_metrics", "only_last", "only_events"])
def test_any_result_makes_an_existing_run(finished, tmp_path, keep):
    run = copy_of(finished, tmp_path, keep)
    line = refused(tmp_path, run)
    assert "trainer.resume: got False" in line and "already holds a run" in line and "nothing was changed" in line


def unfinished(run):
    """Make the run look interrupted (a completed run with resume is skipped, checkpoints or not)."""
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "status": "interrupted"}))
    return run


def test_resume_without_a_checkpoint_beside_results_refuses_instead_of_starting_over(finished, tmp_path):
    run = unfinished(copy_of(finished, tmp_path, ["metrics.json", "best.pt"]))
    line = refused(tmp_path, run, "trainer.resume=true")
    assert "last.pt does not exist" in line and "starting over would replace them" in line


@pytest.mark.slow  # the inner loop: the same refusal for a missing last.pt (above)
def test_resume_from_best_without_best_refuses(finished, tmp_path):
    run = unfinished(copy_of(finished, tmp_path, ["last.pt", "metrics.json"]))
    line = refused(tmp_path, run, "trainer.resume=true", "trainer.resume_from=best")
    assert "trainer.resume_from: got 'best'" in line and "best.pt does not exist" in line


@pytest.mark.slow  # in the inner loop, every refusal above compares the whole tree, .hydra/ and train.log included
def test_a_refused_run_leaves_hydra_files_and_log_untouched(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "train.log").stat().st_size > 0
    refused(tmp_path, run, "model.latent_dim=16")  # the existing-run refusal: a different command


@pytest.mark.parametrize("bad", inner_loop([(["trainer.epochs=0"],), (["optimizer.lr=-1"],),
                                            (["dataset=mnist", "dataset.root=nowhere", "dataset.download=false"],)], 1),
                         ids=["epochs", "lr", "no_data"])
def test_a_command_refused_before_training_leaves_no_run_folder(tmp_path, bad):
    base = [o for o in TINY if not (o.startswith("dataset") and bad[0].startswith("dataset"))]
    code, output = run_cli("train.py", [*base, *bad], tmp_path)
    assert code == 2 and "Traceback" not in output, output
    assert len([line for line in output.splitlines() if line.strip()]) == 1, output
    assert not list(tmp_path.rglob("train.log")) and not list(tmp_path.rglob(".hydra")), list(tmp_path.rglob("*"))
    outputs = tmp_path / "outputs"
    assert not outputs.exists() or not any(p.is_dir() for p in outputs.glob("*/*")), list(outputs.rglob("*"))


@pytest.mark.slow  # the inner loop: a run folder that cannot be created (below)
def test_a_run_dir_that_is_a_file_is_one_line(tmp_path):
    target = tmp_path / "run"
    target.write_text("not a folder")
    code, output = run_cli("train.py", [*TINY, f"hydra.run.dir={target}"], tmp_path)
    assert code != 0 and "Traceback" not in output, output
    assert len([line for line in output.splitlines() if line.strip()]) == 1, output
    assert target.read_text() == "not a folder"


def test_a_full_disk_mid_run_leaves_metrics_in_agreement_with_best(tmp_path, monkeypatch):
    """ENOSPC while writing epoch 3's best.pt: metrics.json must still describe the best.pt on disk."""
    real = files._atomic_write
    calls = {"best": 0}

    def full_disk(path, write):
        if path.name == "best.pt":
            calls["best"] += 1
            if calls["best"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, write)

    monkeypatch.setattr(files, "_atomic_write", full_disk)
    with pytest.raises(OSError):
        run_training(small_run("trainer.epochs=5", "trainer.image_every=0"), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert metrics["status"] == "failed" and "No space left" in metrics["error"]
    assert (metrics["best_epoch"], metrics["best_score"]) == (best["best_epoch"], best["best_score"]) == (2, best["best_score"])


def test_full_disk_through_train_py_is_one_line():
    from aeexp.checkpoints import describe_os_error

    line = describe_os_error(OSError(errno.ENOSPC, "No space left on device", "/runs/x/checkpoints/best.pt"))
    assert "\n" not in line and "/runs/x/checkpoints/best.pt" in line and "disk is full" in line


def test_resume_with_a_different_model_lists_the_keys_and_changes_nothing(finished, tmp_path):
    run = unfinished(copy_of(finished, tmp_path))
    line = refused(tmp_path, run, "trainer.resume=true", "trainer.epochs=2", "model.latent_dim=16", "seed=3")
    assert "model.latent_dim: 64 in the checkpoint, 16 now" in line and "seed: 0 in the checkpoint, 3 now" in line
    assert "What may change on resume" in line


def test_resume_with_a_new_learning_rate_applies_and_records_it(tmp_path):
    run_training(small_run("trainer.epochs=1", "trainer.image_every=0"), tmp_path)
    metrics = run_training(small_run("trainer.epochs=2", "trainer.image_every=0", "trainer.resume=true",
                                     "optimizer.lr=3e-4"), tmp_path)
    assert metrics["epoch"] == 2 and metrics["lr"] == pytest.approx(3e-4)
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert saved["optimizer"]["param_groups"][0]["lr"] == pytest.approx(3e-4)
    assert "lr: 0.0003" in saved["config"]


def test_resume_settings_refusal_is_a_config_error(tmp_path):
    run_training(small_run("trainer.epochs=1", "trainer.image_every=0"), tmp_path)
    with pytest.raises(ConfigError, match="sparsity.name: 'none' in the checkpoint, 'l1' now"):
        run_training(small_run("trainer.epochs=2", "trainer.resume=true", "sparsity=l1"), tmp_path)


def test_a_run_dir_that_cannot_be_created_is_one_line_and_leaves_nothing(tmp_path):
    made = tmp_path / "a" / "b" / "run"
    (code, output), (refused_code, _) = run_many([  # the two commands at once: neither touches the other's folder
        {"script": "train.py", "args": [*TINY, "hydra.run.dir=/proc/aeexp/run"], "cwd": tmp_path},
        {"script": "train.py", "args": [*TINY, f"hydra.run.dir={made}", "trainer.epochs=0"], "cwd": tmp_path},
    ])
    assert code == 2 and "Traceback" not in output, output
    assert [line for line in output.splitlines() if line.strip()] == [output.strip()]
    assert "hydra.run.dir: /proc/aeexp/run cannot be created" in output
    assert refused_code == 2 and not made.exists()  # no run folder left behind
