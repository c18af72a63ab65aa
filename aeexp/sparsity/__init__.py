"""Bottleneck constraints and penalties; importing this package registers them."""

from aeexp.sparsity import lifetime, none, penalties, topk  # noqa: F401  (registration)
from aeexp.sparsity.base import Sparsity

__all__ = ["Sparsity"]
