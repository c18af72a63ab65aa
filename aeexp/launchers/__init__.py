"""Hydra launchers of aeexp's own (``hydra/launcher=<name>``), where no installed plugin does
what a sweep of aeexp needs. Hydra builds launchers only from the ``hydra_plugins`` package,
so each has a two-line subclass there that ``conf/hydra/launcher/<name>.yaml`` names."""

from __future__ import annotations

from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class SweepLauncher(Launcher):
    """What every launcher keeps from Hydra's ``setup``: the sweep's config, Hydra's context and
    the task function (``train.py``'s), for ``launch`` to run the jobs with."""

    def __init__(self) -> None:
        super().__init__()
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
