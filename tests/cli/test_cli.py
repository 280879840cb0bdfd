"""The command line as a user runs it: outputs, exit codes, one-line errors."""

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from t2c.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = os.path.join(ROOT, "tests", "golden")
EXAMPLE = os.path.join(ROOT, "examples", "tiny_moe_transformer.py") + ":build"


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_passes_lists_cleanup_passes(capsys):
    code, out, _ = run(capsys, "passes")
    assert code == 0
    for name in ("dce", "cse", "fold-shapes"):
        assert name in out


def test_opt_matches_golden(capsys):
    before = os.path.join(GOLDEN, "cse", "duplicate_ops.before.t2c")
    with open(os.path.join(GOLDEN, "cse", "duplicate_ops.after.t2c")) as f:
        expected = f.read()
    code, out, _ = run(capsys, "opt", before, "-p", "cse")
    assert code == 0
    from t2c.ir import parse_graph, print_graph

    assert out == print_graph(parse_graph(expected))


def test_opt_stats_go_to_stderr(capsys):
    before = os.path.join(GOLDEN, "dce", "dead_chain.before.t2c")
    code, out, err = run(capsys, "opt", before, "-p", "-O0", "--stats", "--verify-each")
    assert code == 0 and out.startswith("graph ")
    assert "dce" in err and "nodes" in err


def test_opt_unknown_pass_is_exit_2_one_line(capsys):
    before = os.path.join(GOLDEN, "dce", "dead_chain.before.t2c")
    code, out, err = run(capsys, "opt", before, "-p", "cse,frobnicate")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "frobnicate" in err and "dce" in err


def test_opt_bad_ir_names_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.t2c"
    bad.write_text("graph g\ninput %0 \"x\" : f32[4]\n%1 = neg(%7) : f32[4]\noutput \"y\" = %1\n")
    code, _, err = run(capsys, "opt", str(bad), "-p", "dce")
    assert code == 2 and "line 3" in err and err.count("\n") == 1


def test_inspect_factory_text_parses_back(capsys):
    code, out, _ = run(capsys, "inspect", EXAMPLE)
    assert code == 0
    from t2c.ir import parse_graph, verify

    verify(parse_graph(out))  # module comments are ignored by the parser


def test_inspect_json_after_pipeline(capsys):
    code, out, _ = run(capsys, "inspect", EXAMPLE, "--after", "-O0", "--format", "json")
    assert code == 0
    summary = json.loads(out)
    assert summary["inputs"][0]["name"] == "input_ids"
    assert summary["op_counts"]["sdpa"] == 2
    assert [p["pass"] for p in summary["passes"]] == ["fold-shapes", "cse", "dce"]


def test_inspect_dot_groups_layers(capsys):
    code, out, _ = run(capsys, "inspect", EXAMPLE, "--format", "dot")
    assert code == 0 and out.startswith("digraph")
    assert 'label="layers.0"' in out and 'label="layers.1"' in out


def test_inspect_pt2_needs_trust_then_works(tmp_path, capsys):
    class M(torch.nn.Module):
        def forward(self, x):
            return torch.relu(x) * 2.0

    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(M(), (torch.randn(2, 3),)), str(path))
    code, out, err = run(capsys, "inspect", str(path))
    assert code == 2 and "--trust-model" in err
    code, out, err = run(capsys, "inspect", str(path), "--trust-model")
    assert code == 0 and "relu" in out


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_inspect_refuses_pickles_without_trust(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump(_Evil(str(marker)), f)
    code, _, err = run(capsys, "inspect", str(path))
    assert code == 2 and "--trust-model" in err and err.count("\n") == 1
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x00garbage\xff" * 10])
def test_inspect_corrupt_file_is_exit_2(tmp_path, capsys, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    code, _, err = run(capsys, "inspect", str(path))
    assert code == 2 and err.startswith("t2c: error:") and err.count("\n") == 1


def test_console_script_exit_code():
    exe = os.path.join(os.path.dirname(sys.executable), "t2c")
    proc = subprocess.run([exe, "opt", "missing.t2c", "-p", "dce"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("t2c: error: cannot read missing.t2c")


def test_a_pass_that_breaks_the_ir_is_an_internal_error(tmp_path, capsys, monkeypatch):
    """VerifyError from a pass is a t2c bug: exit 3. IR text a user wrote that does not verify: exit 2."""
    from dataclasses import dataclass

    from t2c.passes import Pass, PassResult, manager

    @dataclass(frozen=True)
    class Breaker(Pass):
        def run(self, graph):
            graph.nodes.reverse()  # uses before definitions
            return PassResult(graph, True)

    Breaker.name = "test-breaker"
    monkeypatch.setitem(manager._PASSES, "test-breaker", Breaker)
    before = os.path.join(GOLDEN, "dce", "dead_chain.before.t2c")
    code, out, err = run(capsys, "opt", before, "-p", "test-breaker", "--verify-each")
    assert code == 3 and out == "" and "after pass test-breaker" in err and err.count("\n") == 1

    bad = tmp_path / "bad.t2c"  # parses, but %2 uses %3 before it is defined
    bad.write_text('graph g\ninput %0 "x" : f32[4]\n%1 = neg(%0) : f32[4]\n%2 = abs(%1) : f32[4]\n%3 = neg(%2) : i64[4]\noutput "y" = %3\n')
    code, _, err = run(capsys, "opt", str(bad), "-p", "dce")
    assert code == 2 and "does not verify" in err and err.count("\n") == 1
