"""aeexp: config-driven autoencoder experiments in PyTorch.

Importing the package imports every built-in component, so every registry is complete
whichever module a user imports first.
"""

from aeexp import data, models, sparsity, sweeps, training  # noqa: F401  (registration)
from aeexp.registry import ALL_REGISTRIES

__version__ = "0.1.0"
__all__ = ["ALL_REGISTRIES", "__version__"]
