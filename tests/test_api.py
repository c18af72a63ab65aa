"""The public API for trained models: ``aeexp.load_run`` (the README's example, run as
printed) and ``python -m aeexp export``."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from cli_runner import run_cli
from conftest import REPO, compose

import aeexp
from aeexp.config import ConfigError
from aeexp.export import export_codes
from aeexp.registry import DATASETS
from aeexp.training.run import run_training

RUN = ("dataset=synthetic", "dataset.num_train=256", "dataset.num_val=64", "dataset.num_test=96", "device=cpu",
       "trainer.epochs=2", "trainer.batch_size=64", "trainer.progress=false", "trainer.image_every=0",
       "model.latent_dim=8")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("api") / "run"
    run_training(compose(*RUN), run_dir)
    return run_dir


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    return re.search(r"<!-- load_run example -->\s*```python\n(.*?)```", text, re.S).group(1)


def test_the_readme_example_runs_as_printed_without_touching_the_data(trained, monkeypatch, capsys):
    def no_data(*args, **kwargs):
        raise AssertionError("load_run must not load the dataset")

    monkeypatch.setattr(DATASETS, "build", no_data)
    code = readme_example()
    assert len(code.strip().splitlines()) == 5
    exec(code.replace("outputs/2026-11-22/10-00-00", str(trained)), {})
    printed = capsys.readouterr().out.split()
    assert printed[0] == "fc" and printed[1:3] == ["(4,", "8)"]


def test_load_run_gives_the_trained_model_config_and_metrics(trained):
    run = aeexp.load_run(trained)
    assert run.input_shape == (1, 28, 28) and run.epoch >= 1 and run.checkpoint.name == "best.pt"
    assert run.metrics["status"] == "completed" and run.cfg.model.latent_dim == 8
    assert not run.model.training and not any(p.requires_grad for p in run.model.parameters())
    state = torch.load(trained / "checkpoints" / "best.pt", weights_only=True)
    for name, tensor in run.model.state_dict().items():
        assert torch.equal(tensor, state["model"][name]), name
    x = torch.rand(3, 1, 28, 28)
    x_hat, z = run.model(x)
    assert torch.equal(z, run.model.encode(x)) and torch.allclose(x_hat, run.model.decode(z))
    last = aeexp.load_run(trained, which="last")
    assert last.checkpoint.name == "last.pt"


@pytest.mark.parametrize("fmt", ["npy", "pt"])
def test_export_writes_the_codes_and_labels_of_a_split(trained, tmp_path, fmt):
    files = export_codes([f"run_dir={trained}", "split=test", f"format={fmt}", f"out={tmp_path}", "batch_size=40"])
    load = np.load if fmt == "npy" else (lambda p: torch.load(p, weights_only=True).numpy())
    codes, labels = load(files["codes"]), load(files["labels"])
    assert codes.shape == (96, 8) and labels.shape == (96,)
    run = aeexp.load_run(trained)
    test = DATASETS.build(run.cfg.dataset)
    expected = run.model.encode(test.test_images.float() / 255).reshape(96, -1)
    np.testing.assert_allclose(codes, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert labels.tolist() == test.test_labels.tolist()


def test_export_refuses_bad_arguments_in_one_line(trained):
    with pytest.raises(ConfigError, match="split: got 'dev', allowed: one of train, val, test"):
        export_codes([f"run_dir={trained}", "split=dev"])
    with pytest.raises(ConfigError, match="unknown argument 'colour=red'"):
        export_codes([f"run_dir={trained}", "colour=red"])


def test_python_m_aeexp_export_writes_codes_from_the_command_line(trained, tmp_path):
    """``python -m aeexp export ...``: aeexp/__main__.py run as the interpreter runs it (forked
    from this process by cli_runner, so torch is not imported again)."""
    code, output = run_cli("aeexp/__main__.py", ["export", f"run_dir={trained}", "split=val", f"out={tmp_path}"], REPO)
    assert code == 0, output
    assert np.load(tmp_path / "val_codes.npy").shape == (64, 8) and (tmp_path / "val_labels.npy").exists()
    code, output = run_cli("aeexp/__main__.py", ["export", "run_dir=/nonexistent"], REPO)
    assert code == 2 and "Traceback" not in output and "no such directory" in output


@pytest.mark.slow
def test_importing_aeexp_leaves_torchvision_and_scikit_learn_for_later():
    """Both cost seconds at start-up; a refused command or ``aeexp.load_run`` needs neither."""
    import subprocess
    import sys

    check = ("import sys, aeexp, aeexp.cli, aeexp.export, aeexp.evaluation, aeexp.training.run; "
             "print(sorted(m for m in ('torchvision', 'sklearn', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
