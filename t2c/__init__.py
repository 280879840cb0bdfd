"""t2c: a compiler for transformer models.

torch.export -> t2c IR -> passes -> ONNX / Triton, each artifact validated
against eager PyTorch.
"""

__version__ = "0.1.0"
