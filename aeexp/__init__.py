"""aeexp: config-driven autoencoder experiments in PyTorch.

Importing the package imports every built-in component, so every registry is complete
whichever module a user imports first. Before any of them loads torch, OpenMP is told to
wait passively (:mod:`aeexp.threads`: a busy machine then slows training instead of
stalling it).
"""

from aeexp.threads import set_openmp_defaults

set_openmp_defaults()  # before torch is imported: libgomp reads the environment once, when it loads

from aeexp import data, models, sparsity, sweeps, training  # noqa: E402,F401  (registration, after the OpenMP defaults)
from aeexp.registry import ALL_REGISTRIES
from aeexp.runs import LoadedRun, load_run

__version__ = "0.1.0"
__all__ = ["ALL_REGISTRIES", "LoadedRun", "__version__", "load_run"]
