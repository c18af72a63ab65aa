"""The class Hydra instantiates for ``hydra/launcher=ray`` (Hydra builds launchers only from
the ``hydra_plugins`` package); the launcher itself is :mod:`aeexp.launchers.ray`."""

from aeexp.launchers import ray


class RayLauncher(ray.RayLauncher):
    """See :class:`aeexp.launchers.ray.RayLauncher`."""
