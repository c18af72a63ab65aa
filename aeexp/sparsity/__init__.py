"""Bottleneck constraints and penalties; importing this package registers them."""

from aeexp.sparsity import none  # noqa: F401  (registration)
