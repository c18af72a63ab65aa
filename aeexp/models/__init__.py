"""Model builders; importing this package registers every built-in model."""

from aeexp.models import conv, fc, layers, sae  # noqa: F401  (registration)
from aeexp.models.autoencoder import Autoencoder

__all__ = ["Autoencoder"]
