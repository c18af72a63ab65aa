"""Model builders; importing this package registers every built-in model."""

from aeexp.models import fc, layers  # noqa: F401  (registration)
from aeexp.models.autoencoder import Autoencoder

__all__ = ["Autoencoder"]
