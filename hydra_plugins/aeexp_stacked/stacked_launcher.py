"""The class Hydra instantiates for ``hydra/launcher=stacked`` (Hydra builds launchers only
from the ``hydra_plugins`` package, and imports every module of it at each start: this one
imports aeexp's training code only when a sweep launches). The launcher itself is
:class:`aeexp.stacked.launcher.StackedLauncher`."""

from __future__ import annotations

from typing import Any, Sequence

from hydra.plugins.launcher import Launcher


class StackedLauncher(Launcher):
    """See :class:`aeexp.stacked.launcher.StackedLauncher`."""

    def __init__(self, max_members: int = 32) -> None:
        super().__init__()
        self.max_members = max_members
        self.context: dict[str, Any] = {}

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.context = {"hydra_context": hydra_context, "task_function": task_function, "config": config}

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        from aeexp.stacked.launcher import StackedLauncher as Stacked

        launcher = Stacked(self.max_members)
        launcher.setup(**self.context)
        return launcher.launch(job_overrides, initial_job_idx)
