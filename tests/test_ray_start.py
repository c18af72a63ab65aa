"""Arguments Ray refuses in ``hydra.launcher.ray.init`` end the sweep in one line, exit 2,
before any job (aeexp.launchers.ray.start_ray)."""

from __future__ import annotations

import logging
import signal

import pytest

ray = pytest.importorskip("ray")


def test_ray_init_refusing_its_arguments_is_one_line_and_exit_2(caplog):
    from aeexp.launchers.ray import start_ray

    if ray.is_initialized():
        pytest.skip("Ray already runs in this process")
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exited:
        start_ray({"address": "127.0.0.1:1", "num_cpus": 2})  # Ray checks these before connecting
    assert exited.value.code == 2 and not ray.is_initialized()
    # Ray's own SIGTERM handler (sys.exit) must not stay behind: it would end a later run's clean stop
    assert {signum: signal.getsignal(signum) for signum in before} == before
    [line] = caplog.messages
    assert line.startswith("hydra.launcher.ray.init: ray.init(address='127.0.0.1:1', num_cpus=2) failed: ")
    assert "num_cpus and num_gpus must not be provided" in line
