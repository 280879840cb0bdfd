"""MPT (coverage sweep cause: symbolic shapes with Max that do not broadcast) compiles with a dynamic seq.

MPT builds its ALiBi table at `max_seq_len` (2048) and slices it from `max(0, 2048 - seq)`:
the slice has `2048 - Max(0, 2048 - seq)` rows, which the trace's guards make `seq` (they hold
for seq <= 2047). The frontend decides that Max from the guarded range and records the bound:
the report says `seq <= 2047`, and the artifact refuses longer inputs instead of misbroadcasting.
"""

from __future__ import annotations


import pytest

import onnxruntime as ort

from test_coverage_subset import build_arch  # noqa: E402


@pytest.mark.slow
def test_mpt_compiles_with_dynamic_seq_and_a_bound(tmp_path):
    import torch

    import t2c
    from t2c.errors import UserError

    sweep, model, inputs = build_arch("mpt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        compiled = t2c.compile(model, inputs, passes="-O1", out=str(tmp_path / "mpt"))
        assert compiled.ok is True
        assert str(compiled.graph.inputs[0].type) == "i64[batch,seq]"
        assert compiled.report["constraints"] == ["seq <= 2047"]
        assert len(compiled.report["validation"]["artifact_vs_ir"]) == 2  # a second shape, within the bound
        check = sweep.check_onnx(model, inputs, str(tmp_path / "mpt" / "model.onnx"))
        assert check["ok"], check["error"]
        too_long = torch.zeros(1, 2048, dtype=torch.long)
        with pytest.raises(UserError, match="seq <= 2047"):
            compiled(input_ids=too_long)
        session = ort.InferenceSession(str(tmp_path / "mpt" / "model.onnx"), providers=["CPUExecutionProvider"])
        with pytest.raises(Exception, match="at most 2047"):
            session.run(None, {"input_ids": too_long.numpy()})
    finally:
        torch.set_num_threads(threads)
