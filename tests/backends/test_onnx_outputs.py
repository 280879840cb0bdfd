"""Graph outputs are written by the nodes that compute them, with an Identity only where one must copy."""

import onnxruntime as ort
import torch

from t2c.backends.onnx import lower
from t2c.ir import parse_graph, run_graph


def test_outputs_are_named_on_their_producers_and_copied_only_when_they_must_be():
    g = parse_graph('''graph outputs
input %0 "past" : f32[2,past,4]
input %1 "new" : f32[2,seq,4]
%2 = cat(%0, %1) {dim=1} : f32[2,past+seq,4]
%3 = neg(%2) : f32[2,past+seq,4]
output "present" = %2
output "negated" = %3
output "present_again" = %2
output "past_out" = %0
''')
    model = lower(g)
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    # the cache (an 8 MiB copy per decode step at 2k tokens if an Identity made it) comes from the Concat itself;
    # an output listed twice and an output that is an input need their own tensors
    assert producers["present"] == "Concat" and producers["negated"] == "Neg"
    assert producers["present_again"] == "Identity" and producers["past_out"] == "Identity"
    inputs = {"past": torch.randn(2, 3, 4), "new": torch.randn(2, 1, 4)}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {k: v.numpy() for k, v in inputs.items()})))
    for name, want in run_graph(g, inputs).items():
        assert torch.equal(torch.from_numpy(got[name]), want), name
