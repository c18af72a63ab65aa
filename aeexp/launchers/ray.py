"""``python train.py -m hydra/launcher=ray ...``: each job of a sweep is a Ray task.

By default the sweep starts a local Ray cluster of its own (``ray.init()``, gone when the
sweep ends); ``hydra.launcher.ray.init.address=<host:port>`` (or ``auto``) joins a cluster
that is already running instead. ``hydra.launcher.ray.init`` holds ``ray.init``'s arguments,
``hydra.launcher.ray.remote`` each job's share (``ray.remote``'s options: ``num_cpus``,
``num_gpus``, ``memory``, ...); keys left null are not passed. A job with ``num_cpus: N``
and ``trainer.num_threads=null`` runs torch on N threads (:mod:`aeexp.threads`); one
with ``num_gpus: 1`` sees the GPU Ray gave it, one with ``num_gpus: 0`` sees none
(:func:`hide_unreserved_gpus`) and trains on the CPU.

Jobs are composed and run as Hydra's own launchers do (``load_sweep_config``, the job
number, ``run_job`` in the worker), so folders, ``metrics.json``, refusals and
:class:`aeexp.sweeps.FailureReport` work as with joblib. The jobs write into
``hydra.sweep.dir`` themselves: on a cluster of several machines that folder, the checkout
and its virtual environment must be at the same path on every node (a shared file system).

Why not the ``hydra-ray-launcher`` plugin (1.2.2, which does the same in its local mode):

- ``ray.init`` installs Ray's own handler for SIGTERM in the sweep's process, which aborts
  it (exit 134, a stack dump) and kills the jobs without saving their place; the plugin
  calls ``ray.init`` where nothing can put the sweep's handlers back. Here they are put back
  right after it, so SIGTERM / SIGINT end a Ray sweep as they end a joblib one, and
  ``trainer.resume=true`` finishes it.
- A job whose worker died (killed, out of memory, an import that fails there) raises out of
  the plugin's ``ray.get`` with a traceback and the other jobs' results are lost; here it
  becomes a failed job, recorded in the sweep folder and listed by ``FailureReport``.
- It requires ``cloudpickle<3`` (joblib 1.6, which the ``sweeps`` extra's joblib launcher
  uses, requires ``cloudpickle>=3``), ``boto3`` (which pins ``python-dateutil<3``) and
  ``ray[default]``, all for its AWS launcher; this one needs ``ray`` alone.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from aeexp.launchers import SweepLauncher
from aeexp.sweeps import record_refusal
from aeexp.training.interrupts import SIGNALS

log = logging.getLogger(__name__)

WAIT_SECONDS = 1.0
"""How often the sweep's process returns from Ray's wait, so that its signal handlers run."""


def ray_options(node: DictConfig | dict | None) -> dict[str, Any]:
    """A config node as keyword arguments for Ray, without the keys left null."""
    if node is None:
        return {}
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    return {key: value for key, value in values.items() if value is not None}


def start_ray(init: dict[str, Any]) -> None:
    """``ray.init(**init)`` unless Ray is running in this process already (a sweeper that
    launches several batches), keeping the SIGTERM / SIGINT handlers that were in place:
    Ray's core installs its own, which would abort the sweep."""
    import ray

    if ray.is_initialized():
        return
    in_main_thread = threading.current_thread() is threading.main_thread()
    handlers = {signum: signal.getsignal(signum) for signum in SIGNALS} if in_main_thread else {}
    where = f"joining the Ray cluster at {init['address']}" if init.get("address") else "starting a local Ray cluster"
    log.info("%s (ray.init: %s)", where, ", ".join(f"{k}={v}" for k, v in init.items()) or "defaults")
    try:
        ray.init(**init)
    except (ConnectionError, ValueError, RuntimeError) as err:  # no cluster there, arguments Ray refuses
        message = " ".join(str(err).split())
        log.error("hydra.launcher.ray.init: ray.init(%s) failed: %s", ", ".join(f"{k}={v!r}" for k, v in init.items()),
                  message)  # one line, before any job
        sys.exit(2)
    finally:  # a failed ray.init may have installed its handlers too
        for signum, handler in handlers.items():
            if handler is not None:
                signal.signal(signum, handler)
    log.info("Ray cluster resources: %s", ray.cluster_resources())


def hide_unreserved_gpus() -> None:
    """In a Ray task that reserved no GPU, hide the machine's GPUs (``CUDA_VISIBLE_DEVICES=""``),
    so that ``device=auto`` trains on the CPU instead of sharing a GPU with the jobs that
    reserved it. Ray itself sets the variable only for tasks that reserved GPUs."""
    import ray

    if not ray.get_runtime_context().get_accelerator_ids().get("GPU"):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def run_job_in_worker(hydra_context: HydraContext, sweep_config: DictConfig, task_function: TaskFunction,
                      singleton_state: dict[Any, Any]) -> JobReturn:
    """One job, in a Ray worker: Hydra's global state as the sweep's process had it, then
    Hydra's ``run_job`` (the job's folder, its log file, the callbacks, the task)."""
    hide_unreserved_gpus()
    setup_globals()
    Singleton.set_state(singleton_state)
    HydraConfig.instance().set_config(sweep_config)
    return run_job(hydra_context=hydra_context, task_function=task_function, config=sweep_config,
                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")


def job_dir(sweep_config: DictConfig) -> Path:
    """Where the job writes: ``hydra.sweep.dir`` / ``hydra.sweep.subdir``."""
    return Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)


def lost_job(sweep_config: DictConfig, overrides: Sequence[str], err: Exception) -> JobReturn:
    """The result of a job whose Ray task failed outside the job (its worker died): failed,
    with the reason recorded in the sweep folder for :class:`aeexp.sweeps.FailureReport`."""
    run_dir = job_dir(sweep_config)
    reason = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
    log.error("job #%s (%s): its Ray task failed: %s", sweep_config.hydra.job.num, run_dir.name, reason)
    record_refusal(Path(str(sweep_config.hydra.sweep.dir)), run_dir, reason, kind="lost")
    ret = JobReturn(overrides=list(overrides), cfg=sweep_config, working_dir=str(run_dir), status=JobStatus.FAILED)
    ret.return_value = err
    return ret


class RayLauncher(SweepLauncher):
    """Hydra's ``Launcher`` for ``hydra/launcher=ray`` (``conf/hydra/launcher/ray.yaml``)."""

    def __init__(self, ray: DictConfig) -> None:
        super().__init__()
        self.init = ray_options(ray.get("init"))
        self.remote = ray_options(ray.get("remote"))

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import ray

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        start_ray(self.init)
        task = ray.remote(run_job_in_worker).options(**self.remote)
        log.info("Ray launcher: %d jobs, each with %s; sweep output dir: %s", len(job_overrides),
                 ", ".join(f"{k}={v}" for k, v in self.remote.items()) or "Ray's default share (1 CPU)", sweep_dir)
        singleton_state = Singleton.get_state()
        jobs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
                sweep_config.hydra.job.num = idx
            ref = task.remote(self.hydra_context, sweep_config, self.task_function, singleton_state)
            jobs.append((ref, sweep_config, overrides))
        pending = [ref for ref, _, _ in jobs]
        while pending:  # short waits: a signal to this process is handled within WAIT_SECONDS
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=WAIT_SECONDS)
        results = []
        for ref, sweep_config, overrides in jobs:
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayError as err:
                results.append(lost_job(sweep_config, overrides, err))
        return results
