"""CPU threads that stay fast when the machine is shared.

torch runs its CPU kernels on an OpenMP thread team (one thread per core by default). When a
parallel region ends, a thread that is done waits for the others, and OpenMP's default
waiting spins: GNU libgomp, which torch's Linux wheels use, busy-waits up to 300,000 rounds
(a few milliseconds) before it sleeps. On an idle machine that makes the next region start
sooner. Beside other work it can be a collapse: a thread spins on a core for milliseconds while
the thread it waits for is not running, and the default fc model does thousands of small
regions per epoch. Measured on this project's 2-core machine (README, "Busy machines"): about
0.5 s per epoch idle, 28 s beside one process doing small matrix products with torch's
defaults. Waiting passively, the same run took 0.94-1.11 s beside it (1.7x-1.9x its idle
time), at the price of slower idle epochs (0.57 s against 0.48 s, medians).

Two measures, applied where aeexp is first imported (``train.py``, ``evaluate.py``, tests
and scripts that ``import aeexp`` before torch):

- :func:`set_openmp_defaults` puts ``OMP_WAIT_POLICY=PASSIVE`` into the environment, so a
  waiting thread gives its core away at once. It has to happen before torch loads libgomp,
  which reads the variable once; setting it later changes nothing. Variables the user has
  set (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``, ``KMP_BLOCKTIME``) are left alone, so
  ``GOMP_SPINCOUNT=300000`` restores torch's previous behaviour.
- :func:`configure_cpu_threads` (called by ``run_training``) keeps torch's thread count
  unless ``trainer.num_threads`` names one, or the run is a Ray task (a job of
  ``hydra/launcher=ray``): then it takes the CPUs Ray gave the task. Ray tells OpenMP that
  count through ``OMP_NUM_THREADS``, set anew for every task (1 when the task asked for
  less than one CPU, the user's own value when the sweep's environment had one), but its
  worker processes run one task after another and torch reads the variable only once,
  when it starts.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping

log = logging.getLogger(__name__)

WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
"""Environment variables that set how OpenMP threads wait; if any is set, aeexp sets none."""

OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}
"""What aeexp puts into the environment when the user chose no wait policy."""

too_late = False
"""True when torch was imported before aeexp, so OpenMP kept its own (spinning) default."""


def set_openmp_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Put :data:`OPENMP_DEFAULTS` into ``environ`` (default ``os.environ``) unless the user
    chose a wait policy or torch is already imported (then it would come too late); return
    what was set. Child processes inherit it, so their torch waits passively too."""
    global too_late
    environ = os.environ if environ is None else environ
    if any(name in environ for name in WAIT_VARIABLES):
        return {}
    if environ is os.environ and "torch" in sys.modules:
        too_late = True
        return {}
    environ.update(OPENMP_DEFAULTS)
    return dict(OPENMP_DEFAULTS)


def configure_cpu_threads(num_threads: int | None) -> int:
    """torch's CPU threads for a run: ``num_threads`` if given, else a Ray task's CPUs
    (:func:`ray_task_cpus`), else torch's default (one per core), which with passive OpenMP
    waiting keeps both the idle speed and the speed beside other work (see the module
    docstring). Returns the count in effect."""
    import torch

    from_ray = None if num_threads else ray_task_cpus()
    if num_threads or from_ray:
        torch.set_num_threads(num_threads or from_ray)
    threads = torch.get_num_threads()
    if from_ray:
        log.info("torch uses %d CPU thread(s): this Ray task's CPUs (hydra.launcher.ray.remote.num_cpus)", threads)
    if too_late:
        log.info("torch was imported before aeexp, so OpenMP threads spin-wait (slow beside other work); "
                 "import aeexp first or set OMP_WAIT_POLICY=PASSIVE")
    return threads


def ray_task_cpus() -> int | None:
    """In a Ray task, the thread count Ray chose for it (``OMP_NUM_THREADS``, which Ray sets
    for each task from its ``num_cpus``); None anywhere else. Ray is never imported here:
    a process that runs Ray tasks has it imported already."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    worker = getattr(ray.get_runtime_context(), "worker", None)
    if getattr(worker, "mode", None) != ray.WORKER_MODE:
        return None  # the driver (the sweep's own process), not a task
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return None
