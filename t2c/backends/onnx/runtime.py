"""Run the ONNX artifact: an ONNX Runtime session that takes and returns torch tensors."""

from __future__ import annotations

import os

import numpy as np
import torch

from ...errors import UserError


class OnnxSession:
    """`session(**inputs) -> {output name: tensor}` over an ONNX Runtime InferenceSession."""

    def __init__(self, path: str, providers: list[str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise UserError("onnxruntime is not installed: pip install 't2c[ort]' (or 't2c[ort-gpu]')") from e
        if not os.path.isfile(path):
            raise UserError(f"{path} does not exist; compile the model first (t2c compile MODEL -o DIR)")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(path, options, providers=providers or ["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> dict[str, torch.Tensor]:
        if args:
            if len(args) > len(self.input_names):
                raise UserError(f"the model takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), got {len(args)}")
            kwargs = {**dict(zip(self.input_names, args)), **kwargs}
        missing = [n for n in self.input_names if n not in kwargs]
        if missing:
            raise UserError(f"missing inputs {missing}; the model takes {self.input_names}")
        feed = {n: _to_numpy(kwargs[n]) for n in self.input_names}
        results = self.session.run(self.output_names, feed)
        return {n: torch.from_numpy(np.ascontiguousarray(r)) for n, r in zip(self.output_names, results)}


def _to_numpy(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        if t.dtype == torch.bfloat16:
            raise UserError("bfloat16 inputs cannot be fed to ONNX Runtime from numpy; pass float32")
        return t.contiguous().numpy()
    return np.asarray(t)
