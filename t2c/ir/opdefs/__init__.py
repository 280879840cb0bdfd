"""Declarations of every IR op, grouped by family. Importing this registers them."""

from . import creation, nn, pointwise, reduction, shape, moe  # noqa: F401
