"""The check every model test ends with: the IR interpreter reproduces eager PyTorch."""

import torch

from t2c.frontends.torch_export import flatten_outputs
from t2c.ir import run_graph

SHAPES = ((2, 16), (3, 37))  # the traced shape, then another batch and sequence length


def vocab_size(model) -> int:
    if hasattr(model, "config"):
        return model.config.vocab_size
    return model.embed_tokens.num_embeddings  # the example model


def assert_matches_eager(model, graph, label: str, *, shapes=SHAPES, tol: float = 1e-5, seed: int = 5) -> None:
    """Run `graph` and `model` on the same random token ids at each shape; every output within `tol`."""
    for shape in shapes:
        ids = torch.randint(0, vocab_size(model), shape, generator=torch.Generator().manual_seed(seed))
        got = run_graph(graph, {"input_ids": ids})
        with torch.no_grad():
            names, values = flatten_outputs(model(input_ids=ids))
        want = dict(zip(names, values))
        assert list(got) == names, f"{label}: outputs {list(got)} != {names}"
        for name, value in got.items():
            assert value.shape == want[name].shape, f"{label} {name} {shape}: shape {tuple(value.shape)}"
            err = (value - want[name]).abs().max().item()
            assert err <= tol, f"{label} {name} at {shape}: max abs error {err}"
