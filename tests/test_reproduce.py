"""scripts/reproduce.py --quick runs end to end: trains, evaluates, writes a report with its
pictures, checks the claims, and leaves docs/ alone."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

EXPERIMENTS = "fc_shallow,topk5,topk16,denoise_gaussian,hinton30"


@pytest.mark.slow
def test_reproduce_quick_runs_end_to_end(tmp_path):
    docs_report = REPO / "docs" / "RESULTS.md"
    before = docs_report.stat().st_mtime_ns if docs_report.exists() else None
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "reproduce.py"), "--quick", "--dataset", "synthetic",
         "--device", "cpu", "--experiments", EXPERIMENTS, "--runs", str(tmp_path), "--out", str(tmp_path),
         "trainer.num_threads=1"],
        capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    report = tmp_path / "RESULTS.md"
    text = report.read_text()
    assert "Quick smoke run" in text
    for name in EXPERIMENTS.split(","):
        assert f"### `{name}`" in text
        assert (tmp_path / name / "checkpoints" / "best.pt").exists()
        assert (tmp_path / name / ".hydra" / "config.yaml").exists()
        assert (tmp_path / "results" / name / "reconstructions.png").exists()
        assert f"(results/{name}/reconstructions.png)" in text
    assert "## Second seed" in text and "MNIST, a 5k-image training subset" in text
    assert "| paper (MNIST) | 3.00 | 13.87 |" in text and "| ours, ReLU (`hinton30`, `synthetic`) |" in text
    # Top-k's L0 is exact (k per image), so this claim passes even after one epoch.
    assert "PASS  a smaller k gives fewer active features (`topk5` vs `topk16`): L0 per test image 5.00 vs 16.00" in done.stdout
    assert "| a smaller k gives fewer active features (`topk5` vs `topk16`) | **PASS** |" in text
    assert "denoising beats the noisy input (`denoise_gaussian`)" in text
    # Claims whose experiments did not run say so instead of failing.
    assert "| the conv autoencoder beats the vanilla one at d=32 (`conv32` vs `mlp32`) | **n/a** |" in text
    after = docs_report.stat().st_mtime_ns if docs_report.exists() else None
    assert after == before, "--quick must not write docs/RESULTS.md"


def test_reproduce_refuses_an_unknown_experiment(capsys):
    spec = importlib.util.spec_from_file_location("reproduce", REPO / "scripts" / "reproduce.py")
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    with pytest.raises(SystemExit) as stop:
        reproduce.parse_args(["--quick", "--experiments", "nosuch"])
    assert stop.value.code == 2 and "unknown experiments ['nosuch']" in capsys.readouterr().err
    quick = reproduce.parse_args(["--quick"])
    quick.runs.rmdir()  # the empty temp dir it made
    assert quick.names == reproduce.EXPERIMENTS and quick.report == quick.runs / "RESULTS.md"
    # The committed report is written only when asked for by --out.
    full = reproduce.parse_args([])
    assert full.report == REPO / "outputs" / "reproduce" / "fashion_mnist" / "RESULTS.md"
    assert reproduce.parse_args(["--out", "/tmp/x"]).report == Path("/tmp/x/RESULTS.md")
    assert reproduce.parse_args(["--out", str(REPO / "docs")]).report == REPO / "docs" / "RESULTS.md"


@pytest.mark.slow
def test_reproduce_writes_no_report_when_every_experiment_fails(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "RESULTS.md").write_text("an earlier, good report\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "reproduce.py"), "--quick", "--dataset", "mnist", "--device", "cpu",
         "--dataset-root", str(tmp_path / "no_data"), "--experiments", "fc_shallow", "--runs", str(tmp_path / "runs"),
         "--out", str(out), "dataset.download=false"],
        capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1
    assert "every experiment failed (fc_shallow): no report written" in done.stdout
    assert (out / "RESULTS.md").read_text() == "an earlier, good report\n"
    assert sorted(p.name for p in out.iterdir()) == ["RESULTS.md"]
