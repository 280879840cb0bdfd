"""Declarations of every IR op, grouped by family. Importing this registers them."""

from . import activation, add_norm, attention, conv, creation, data_dependent, experts, nn, pointwise, quant, reduction, rope, shape  # noqa: F401
