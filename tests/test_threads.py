"""CPU threads and OpenMP waiting (aeexp.threads): the defaults reach libgomp, and an
explicit choice (trainer.num_threads, the user's own OpenMP variables) wins."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from aeexp.threads import OPENMP_DEFAULTS, WAIT_VARIABLES, configure_cpu_threads, set_openmp_defaults


def test_openmp_defaults_fill_an_empty_environment():
    environ: dict[str, str] = {}
    assert set_openmp_defaults(environ) == OPENMP_DEFAULTS
    assert environ == OPENMP_DEFAULTS


@pytest.mark.parametrize("name", WAIT_VARIABLES)
def test_openmp_defaults_leave_the_users_choice(name):
    environ = {name: "300000"}
    assert set_openmp_defaults(environ) == {}
    assert environ == {name: "300000"}


def openmp_settings(env_changes: dict[str, str]) -> str:
    """libgomp's own report of its settings in a fresh `import aeexp, torch` (OMP_DISPLAY_ENV)."""
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    env.update(env_changes, OMP_DISPLAY_ENV="VERBOSE")
    done = subprocess.run([sys.executable, "-c", "import aeexp, torch; torch.ones(1 << 20).sum()"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    if "GOMP_SPINCOUNT" not in done.stderr:
        pytest.skip("torch's OpenMP runtime here is not GNU libgomp")
    return done.stderr


@pytest.mark.slow
def test_importing_aeexp_first_makes_libgomp_wait_passively():
    assert "GOMP_SPINCOUNT = '0'" in openmp_settings({})  # PASSIVE: no spinning before sleeping


@pytest.mark.slow
def test_a_users_spin_count_reaches_libgomp():
    assert "GOMP_SPINCOUNT = '300000'" in openmp_settings({"GOMP_SPINCOUNT": "300000"})


def test_configure_cpu_threads_honours_an_explicit_count_and_keeps_torchs_otherwise():
    before = torch.get_num_threads()
    try:
        assert configure_cpu_threads(1) == 1 == torch.get_num_threads()
        assert configure_cpu_threads(None) == 1  # null changes nothing torch already has
        torch.set_num_threads(before)
        assert configure_cpu_threads(None) == before
    finally:
        torch.set_num_threads(before)
