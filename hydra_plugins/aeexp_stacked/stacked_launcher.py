"""The class Hydra instantiates for ``hydra/launcher=stacked`` (Hydra builds launchers only
from the ``hydra_plugins`` package); the launcher itself is :mod:`aeexp.stacked.launcher`."""

from aeexp.stacked import launcher


class StackedLauncher(launcher.StackedLauncher):
    """See :class:`aeexp.stacked.launcher.StackedLauncher`."""
