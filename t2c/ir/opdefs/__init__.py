"""Declarations of every IR op, grouped by family. Importing this registers them."""

from . import attention, creation, moe, nn, pointwise, reduction, shape  # noqa: F401
