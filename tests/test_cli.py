"""``python train.py`` end to end, in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, tiny_idx_set, write_idx_set


def train_py(*args: str, cwd, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("AEEXP_DATA", "HYDRA_FULL_ERROR")} | (env or {})
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.slow
def test_train_py_runs_and_leaves_a_complete_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    result = train_py(
        "dataset=synthetic", "dataset.num_train=256", "dataset.num_val=128", "trainer.epochs=1",
        "trainer.batch_size=64", "device=cpu", f"hydra.run.dir={run_dir}", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for path in ("checkpoints/last.pt", "checkpoints/best.pt", "metrics.json", "train.log", ".hydra/config.yaml"):
        assert (run_dir / path).is_file(), path
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert "val_mse" in (run_dir / "train.log").read_text()


@pytest.mark.slow
def test_train_py_from_any_folder_reads_paths_data_dir_and_writes_under_paths_output_dir(tmp_path):
    """conf/paths: with AEEXP_ROOT=<project>, data comes from <project>/data and the run goes to
    <project>/outputs/<date>/<time>, whatever folder the command runs from; nothing lands there."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    write_idx_set(project / "data" / "FashionMNIST" / "raw", tiny_idx_set(num_train=40, num_test=10))
    elsewhere.mkdir()
    result = train_py("dataset=fashion_mnist", "dataset.val_size=8", "dataset.download=false", "debug=fast",
                      "trainer.batch_size=8", "device=cpu", cwd=elsewhere, env={"AEEXP_ROOT": str(project)})
    assert result.returncode == 0, result.stdout + result.stderr
    runs = list((project / "outputs").glob("*/*/metrics.json"))
    assert len(runs) == 1 and json.loads(runs[0].read_text())["status"] == "completed"
    assert not list(elsewhere.iterdir())


@pytest.mark.slow
def test_unknown_model_option_lists_the_available_ones(tmp_path):
    result = train_py("model=nosuch", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "nosuch" in output and "fc" in output and "mlp" in output


@pytest.mark.slow
def test_bad_value_exits_nonzero_with_one_line_and_no_traceback(tmp_path):
    run_dir = tmp_path / "run"
    result = train_py("trainer.epochs=0", "dataset=synthetic", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if "trainer.epochs" in line]
    assert len(lines) == 1, output
    assert "0" in lines[0]
    assert not (run_dir / "checkpoints").exists()


def test_no_package_source_file_is_git_ignored():
    """A fresh clone must hold the whole package (e.g. a ``data/`` rule must not hide aeexp/data/)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    result = subprocess.run(
        ["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--", "aeexp", "conf", "train.py"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    ignored = [path for path in result.stdout.splitlines() if path.endswith((".py", ".yaml"))]
    assert not ignored, f"git ignores package files: {ignored}"
