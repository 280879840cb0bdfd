"""`--with-past`: causal LMs compiled with their KV cache, greedy generation against eager `generate`.

Every zoo model that can generate (enumerated: `model.can_generate()`; dense, GQA, sliding
window, MoE) is compiled with its cache as inputs and outputs (t2c/frontends/hf_past.py), and
32 greedy tokens from the ONNX artifact must equal transformers' own `generate` token for token,
at batch 1 and at batch 3 with prompts of different lengths (left-padded, as `generate` pads).
Mistral's window is 8: its rolling cache of 7 positions rolls many times in 32 tokens, from
prompts both shorter than the cache (zeros in front) and as long.
"""

import pytest
import torch

import t2c
import zoo
from t2c.errors import UserError
from t2c.frontends.hf_past import past_names, present_names

PROMPTS = [[5, 17, 42, 7, 9, 11, 3], [1, 2, 3], [100, 90, 80, 70, 60]]
NEW_TOKENS = 32


def _decoders() -> list[str]:
    names = []
    for name, build in zoo.ZOO.items():
        if name == "minilm":  # needs the weights package; an encoder anyway
            continue
        model, _ = build()
        if getattr(model, "can_generate", lambda: False)():
            names.append(name)
    return names


DECODERS = _decoders()


def test_the_zoo_has_the_decoder_kinds():
    assert set(DECODERS) >= {"gpt2", "llama", "mistral", "mixtral"}, DECODERS


def _eager_generate(model, prompts: list[list[int]], eos, tokens: int = NEW_TOKENS) -> list[list[int]]:
    """transformers' greedy generate on left-padded prompts, cut after each sequence's first eos."""
    longest = max(map(len, prompts))
    ids = torch.tensor([[0] * (longest - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    model.config.use_cache = True
    stop = {} if eos is not None else {"eos_token_id": None, "pad_token_id": 0}
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=tokens, do_sample=False, **stop)[:, longest:].tolist()
    eos = {eos} if isinstance(eos, int) else set(eos or [])
    cut = []
    for seq in out:
        ends = [i for i, t in enumerate(seq) if t in eos]
        cut.append(seq[: ends[0] + 1] if ends else seq)
    return cut


@pytest.fixture(scope="module", params=DECODERS)
def compiled(request, tmp_path_factory):
    model, examples = zoo.build(request.param)
    out = tmp_path_factory.mktemp(request.param)
    return model, t2c.compile(model, examples, out=str(out), with_past=True)


def test_the_cache_is_inputs_and_outputs(compiled):
    model, c = compiled
    layers = model.config.num_hidden_layers
    inputs = {v.name: v.type for v in c.graph.inputs}
    assert list(inputs) == ["input_ids", "attention_mask", "position_ids", *past_names(layers)]
    assert [n for n, _ in c.graph.outputs] == ["logits", *present_names(layers)]
    assert [str(d) for d in inputs["attention_mask"].shape] == ["batch", "past+seq"]
    assert [str(d) for d in inputs["past_key_0"].shape[::2]] == ["batch", "past"]
    assert c.report["with_past"]["layers"] == layers and c.ok
    # A model whose every layer is a sliding window of W keeps a rolling cache of W - 1 positions
    # (memory flat in the context); the others return the whole past + seq.
    window = getattr(model.config, "sliding_window", None)
    present = dict(c.graph.outputs)["present_key_0"].type.shape[2]
    if window:
        assert c.report["with_past"]["rolling"] == window - 1 and present == window - 1
    else:
        assert c.report["with_past"]["rolling"] == 0 and str(present) == "past+seq"


def test_greedy_generation_equals_eager_generate(compiled):
    model, c = compiled
    eos = c.report["with_past"]["eos_token_id"]
    want = _eager_generate(model, PROMPTS, eos)
    assert c.generate(PROMPTS, NEW_TOKENS) == want
    assert any(len(s) == NEW_TOKENS for s in want)  # a real run, not only early stops
    for prompt in PROMPTS[:2]:  # batch 1, and the single-sequence form
        assert c.generate(prompt, NEW_TOKENS) == _eager_generate(model, [prompt], eos)[0]


def test_eos_none_runs_every_step(compiled):
    _, c = compiled
    assert [len(s) for s in c.generate(PROMPTS, 5, eos_token_id=None)] == [5, 5, 5]


def test_ort_flavor_generates_the_same(tmp_path):
    model, examples = zoo.build("llama")
    c = t2c.compile(model, examples, out=str(tmp_path), with_past=True, flavor="ort")
    assert c.generate(PROMPTS, NEW_TOKENS) == _eager_generate(model, PROMPTS, c.report["with_past"]["eos_token_id"])


def test_models_without_a_kv_cache_are_refused(tmp_path):
    model, examples = zoo.build("bert")
    with pytest.raises(UserError, match="--with-past needs a Hugging Face causal language model"):
        t2c.compile(model, examples, out=str(tmp_path / "bert"), with_past=True)

    class Plain(torch.nn.Module):
        def forward(self, input_ids):
            return input_ids.float() * 2

    with pytest.raises(UserError, match="--with-past needs a Hugging Face causal language model"):
        t2c.compile(Plain(), {"input_ids": torch.ones(2, 3, dtype=torch.long)}, out=str(tmp_path / "plain"), with_past=True)
    assert not (tmp_path / "bert").exists() and not (tmp_path / "plain").exists()


def test_generate_refuses_an_artifact_without_cache(tmp_path):
    model, examples = zoo.build("llama")
    c = t2c.compile(model, examples, out=str(tmp_path))
    with pytest.raises(UserError, match="compiled without a KV cache"):
        c.generate([1, 2, 3], 4)


def test_t2c_window_rolls_the_cache_and_decodes_as_the_windowed_model(tmp_path):
    """`window{size=4}` on a full-attention Llama with --with-past: the window goes into the
    cache's mask, the cache rolls at 3 positions, and greedy decoding from it equals recomputing
    the whole sequence each step through the same pipeline compiled without a cache."""
    model, examples = zoo.build("llama")
    pipeline = "-O1,window{size=4}"
    past = t2c.compile(model, examples, passes=pipeline, out=str(tmp_path / "past"), with_past=True)
    full = t2c.compile(model, examples, passes=pipeline, out=str(tmp_path / "full"))
    assert past.report["with_past"]["rolling"] == 3 and dict(past.graph.outputs)["present_key_0"].type.shape[2] == 3
    window = next(p for p in past.report["passes"] if p["pass"] == "window")
    assert window["stats"]["kv_cache"] == model.config.num_hidden_layers
    got = past.generate(PROMPTS, 24, eos_token_id=None)
    for prompt, tokens in zip(PROMPTS, got):
        sequence = list(prompt)
        for _ in range(24):
            sequence.append(int(full(input_ids=torch.tensor([sequence]))["logits"][0, -1].argmax()))
        assert tokens == sequence[len(prompt):]


def test_t2c_window_keeps_its_global_tokens_cached(tmp_path):
    """`window{size=4,global=2}` with --with-past: the cache keeps the first 2 positions for good and
    rolls the last 3 after them (5 positions however long the generation), and greedy decoding from it
    equals recomputing the whole sequence through the same pipeline without a cache, where the first
    2 positions stay visible to every later token. A prompt shorter than the global tokens is refused."""
    model, examples = zoo.build("llama")
    pipeline = "-O1,window{size=4,global=2}"
    past = t2c.compile(model, examples, passes=pipeline, out=str(tmp_path / "past"), with_past=True)
    full = t2c.compile(model, examples, passes=pipeline, out=str(tmp_path / "full"))
    interface = past.report["with_past"]
    assert (interface["rolling"], interface["sinks"]) == (3, 2) and dict(past.graph.outputs)["present_key_0"].type.shape[2] == 5
    for prompt in PROMPTS:  # one at a time: in a left-padded batch the frame's first positions are padding
        got = past.generate(prompt, 24, eos_token_id=None)
        sequence = list(prompt)
        for _ in range(24):
            sequence.append(int(full(input_ids=torch.tensor([sequence]))["logits"][0, -1].argmax()))
        assert got == sequence[len(prompt):]
    with pytest.raises(UserError, match="at least 2 tokens"):
        past.generate([7], 3)


def test_moe_and_int8_decode_as_the_same_pipeline_without_cache(tmp_path):
    """Mixtral at -O2 (weight-only int8 linears and experts) with --with-past: greedy decoding from
    the cache equals recomputing the whole sequence each step through -O2 compiled without one."""
    model, examples = zoo.build("mixtral")
    past = t2c.compile(model, examples, passes="-O2", out=str(tmp_path / "past"), with_past=True)
    full = t2c.compile(model, examples, passes="-O2", out=str(tmp_path / "full"))
    ops = past.report["op_counts"]["final"]
    assert ops.get("qlinear") and ops.get("qexperts") and past.ok
    for prompt, tokens in zip(PROMPTS, past.generate(PROMPTS, 16, eos_token_id=None)):
        sequence = list(prompt)
        for _ in range(16):
            sequence.append(int(full(input_ids=torch.tensor([sequence]))["logits"][0, -1].argmax()))
        assert tokens == sequence[len(prompt):]


def test_triton_target_decodes_the_same(tmp_path):
    """--target triton (under TRITON_INTERPRET=1 here): the same with-past graph, the same ids as eager."""
    model, examples = zoo.build("llama")
    c = t2c.compile(model, examples, target="triton", out=str(tmp_path), with_past=True)
    prompts = [[5, 17, 42, 7], [1, 2]]
    assert c.ok and c.generate(prompts, 8, eos_token_id=None) == _eager_generate(model, prompts, None, 8)


LINEAR = "-O1,linear-attention"


@pytest.mark.parametrize("name", DECODERS)
def test_linear_attention_decodes_from_a_state_of_constant_size(name, tmp_path):
    """`-O1,linear-attention` with --with-past: every layer's KV cache becomes one state
    [batch, kv_heads, D, Dv+1] (passes/linear_state.py), the same size at every step, and greedy
    decoding from it equals recomputing the whole sequence through the same pipeline without a
    cache, at batch 3 with left-padded prompts. A model whose own cache rolls (a sliding window)
    keeps its KV cache: a state would sum the keys the window forgets (a near-miss)."""
    model, examples = zoo.build(name)
    past = t2c.compile(model, examples, passes=LINEAR, out=str(tmp_path / "past"), with_past=True)
    layers = model.config.num_hidden_layers
    stats = next(p for p in past.report["passes"] if p["pass"] == "linear-attention")["stats"]
    if past.report["with_past"]["rolling"]:
        assert stats["kv_cache"] == 0 and "present_key_0" in dict(past.graph.outputs)
        return
    assert stats["kv_cache"] == layers and past.ok
    states = [v for v in past.graph.inputs if v.name.startswith("past_")]
    assert [v.name for v in states] == [f"past_state_{i}" for i in range(layers)]
    assert all(str(d) != "past" for v in states for d in v.type.shape)  # no dim grows with the context
    assert [n for n, _ in past.graph.outputs] == ["logits", *[f"present_state_{i}" for i in range(layers)]]
    full = t2c.compile(model, examples, passes=LINEAR, out=str(tmp_path / "full"))
    tokens = 12
    for prompt, got in zip(PROMPTS, past.generate(PROMPTS, tokens, eos_token_id=None)):
        sequence = list(prompt)
        for _ in range(tokens):
            sequence.append(int(full(input_ids=torch.tensor([sequence]))["logits"][0, -1].argmax()))
        assert got == sequence[len(prompt):]


def test_a_state_takes_the_prompt_in_chunks(tmp_path, monkeypatch):
    """generate feeds a decode-state artifact its prompt PREFILL_CHUNK tokens a call (O(n * chunk));
    chunks of 2 and 3, where the left-padded prompts have chunks of padding only, give the ids of one call."""
    import t2c.generate as generation

    model, examples = zoo.build("llama")
    c = t2c.compile(model, examples, passes=LINEAR, out=str(tmp_path), with_past=True)
    whole = c.generate(PROMPTS, 8, eos_token_id=None)
    for chunk in (2, 3):
        monkeypatch.setattr(generation, "PREFILL_CHUNK", chunk)
        assert c.generate(PROMPTS, 8, eos_token_id=None) == whole


def test_linear_attention_state_on_the_ort_flavor_and_triton(tmp_path):
    """The state form on the ort flavor and on --target triton (TRITON_INTERPRET=1 here): validated,
    and the ids of the standard ONNX artifact."""
    model, examples = zoo.build("llama")
    prompts = [[5, 17, 42, 7], [1, 2]]
    want = t2c.compile(model, examples, passes=LINEAR, out=str(tmp_path / "onnx"), with_past=True).generate(prompts, 8, eos_token_id=None)
    for target, flavor in (("onnx", "ort"), ("triton", None)):
        c = t2c.compile(model, examples, passes=LINEAR, target=target, out=str(tmp_path / target), with_past=True,
                        **({"flavor": flavor} if flavor else {}))
        assert c.ok and "past_state_0" in {v.name for v in c.graph.inputs}
        assert c.generate(prompts, 8, eos_token_id=None) == want
