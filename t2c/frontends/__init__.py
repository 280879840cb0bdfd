"""Frontends: load model sources (loaders.py) and trace them into t2c IR."""
