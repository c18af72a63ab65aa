"""A Ray task's CPU share becomes torch's thread count when trainer.num_threads is null
(aeexp.threads.ray_task_cpus), read the way Ray hands it over: OMP_NUM_THREADS, set anew
for each task in a worker process that runs many. Ray itself is stood in for here (its
runtime context is all that is asked); tests/test_ray_launcher.py checks it in real tasks."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from aeexp.threads import configure_cpu_threads, ray_task_cpus

WORKER_MODE, SCRIPT_MODE = 1, 0  # ray.WORKER_MODE and the driver's mode


def stand_in_ray(mode: int, initialized: bool = True) -> SimpleNamespace:
    context = SimpleNamespace(worker=SimpleNamespace(mode=mode))
    return SimpleNamespace(WORKER_MODE=WORKER_MODE, is_initialized=lambda: initialized,
                           get_runtime_context=lambda: context)


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_ray_task_runs_torch_on_its_cpus_unless_num_threads_says_otherwise(monkeypatch, torch_threads):
    monkeypatch.setitem(sys.modules, "ray", stand_in_ray(WORKER_MODE))
    torch.set_num_threads(1)  # as a worker that ran a 1-CPU task before
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert configure_cpu_threads(None) == 2 == torch.get_num_threads()
    assert configure_cpu_threads(1) == 1  # trainer.num_threads wins
    monkeypatch.setenv("OMP_NUM_THREADS", "0")  # Ray's value for a task of less than one CPU is 1; never 0
    assert ray_task_cpus() == 1


@pytest.mark.parametrize("ray", [stand_in_ray(SCRIPT_MODE), stand_in_ray(WORKER_MODE, initialized=False), None],
                         ids=["the sweep's own process", "ray imported, not started", "no ray"])
def test_outside_a_ray_task_torch_keeps_its_count(monkeypatch, torch_threads, ray):
    monkeypatch.setitem(sys.modules, "ray", ray)  # None: as if never imported
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(1)
    assert ray_task_cpus() is None
    assert configure_cpu_threads(None) == 1
