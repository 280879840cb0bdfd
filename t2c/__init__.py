"""t2c: a compiler for transformer models.

torch.export -> t2c IR -> passes -> ONNX / Triton, each artifact validated
against eager PyTorch.

    compiled = t2c.compile(model, {"input_ids": ids}, passes="-O1", out="out/")
    compiled(input_ids=ids)["logits"]
    t2c.load("out/")
"""

__version__ = "0.1.0"

from .api import CompiledModel, compile, load  # noqa: E402
from .passes.manager import Pipeline  # noqa: E402

__all__ = ["CompiledModel", "Pipeline", "__version__", "compile", "load"]
