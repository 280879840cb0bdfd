"""The attention plan: what any backend needs to execute one `attention` op.

Computed once from the op's attrs and operand types (t2c/ir/opdefs/attention.py
gives the semantics); the ONNX lowering and the Triton kernels read the same plan.

form
    "fused"    no structure, or causal only (j <= i with an unlimited reach) over
               equal query/key lengths: one whole-sequence attention kernel
               (ONNX Attention, FlashAttention) does it;
    "blocked"  a band (a sliding window bounded on both sides, causal or not, or
               block-local attention), optionally with global tokens, over equal
               lengths: the sequence is cut into blocks of `block_size` and query
               block b attends only key blocks b + o for o in `key_offsets`, plus
               the first `global_tokens` keys; the first `global_tokens` queries
               attend every key. Work and memory grow as n * (len(key_offsets) *
               block_size + global_tokens), never n^2;
    "dense"    anything else (a window unbounded on one side, different lengths
               with structure, a band over a mask that varies over queries too):
               whole scores with the structural mask.
heads
    q_heads = kv_heads * group; query head h reads KV head h // group, so a
    kernel groups the `group` query heads of a KV head together instead of
    repeating K and V.
mask
    "none"; "row": the operand broadcasts as [B|1, H|1, 1, Sk] (a key-padding
    row, one per batch element and maybe per head); "full": it varies over
    queries too. `mask_shape` is its type's dims as the [B, H, Sq, Sk] it
    broadcasts to, `mask_bool` whether it is boolean (true = attend) rather than
    additive.
rope
    the RopePlan of q and k when a rotary embedding is fused, else None.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.core import Dim, TensorType, dims_equal
from ..ir.opdefs.attention import AttentionAttrs, has_structure
from .rope import RopePlan, rope_plan

# Blocks no larger than this: a window of W then costs W + Bk keys per query
# instead of 2W (block i-1 and i), at the price of more, smaller key slices.
MAX_BLOCK = 128


@dataclass(frozen=True)
class AttentionPlan:
    form: str  # "fused" | "blocked" | "dense"
    scale: float
    softcap: float
    causal: bool
    window: tuple[int, int]
    block: int  # block-local attention (the attr), 0 when none
    global_tokens: int
    q_heads: int
    kv_heads: int
    group: int  # query heads per KV head
    head_dim: int
    v_head_dim: int
    same_length: bool
    block_size: int  # blocked form: the block length Bk; 0 otherwise
    key_offsets: tuple[int, ...]  # blocked form: key blocks b + o visited by query block b
    mask: str  # "none" | "row" | "full"
    mask_bool: bool
    mask_shape: tuple[Dim, ...]  # [B, H, Sq, Sk] broadcast dims of the mask operand; () when none
    rope: RopePlan | None

    @property
    def causal_only(self) -> bool:
        """The structural rule is j <= i and nothing else (global tokens change nothing under it)."""
        return self.causal and self.window[0] < 0 and self.block == 0


def key_blocks(a: AttentionAttrs) -> tuple[int, tuple[int, ...]] | None:
    """(block size Bk, key-block offsets) of the blocked form, or None when the band is unbounded."""
    left, right = a.window
    if a.block > 0:  # i // b == j // b: only the query's own block (a window only narrows it)
        return a.block, (0,)
    reach_r = 0 if a.causal else right
    if left < 0 or reach_r < 0:
        return None
    bk = min(max(left, reach_r) + 1, MAX_BLOCK)
    n_left, n_right = -(-left // bk), -(-reach_r // bk)  # blocks the band reaches on each side
    return bk, tuple(range(-n_left, n_right + 1))


def _mask_kind(m: TensorType) -> tuple[str, tuple[Dim, ...]]:
    """("row" | "full", the mask's dims as the [B, H, Sq, Sk] it broadcasts to)."""
    shape = (1,) * (4 - m.rank) + tuple(m.shape)
    return ("row" if shape[2] == 1 else "full"), shape


def attention_plan(
    a: AttentionAttrs,
    q: TensorType,
    k: TensorType,
    v: TensorType,
    mask: TensorType | None = None,
    cos: TensorType | None = None,
) -> AttentionPlan:
    """The plan of `attention(q, k, v, mask?, cos?, sin?) {a}` (operand types as the op takes them)."""
    hq, hkv = q.shape[1], k.shape[1]  # static: the verifier insists
    same = dims_equal(q.shape[-2], k.shape[-2])
    blocks = key_blocks(a)
    mask_kind, mask_shape = ("none", ()) if mask is None else _mask_kind(mask)
    if not has_structure(a) or (a.causal and a.window[0] < 0 and a.block == 0 and same):
        form, bk, offs = "fused", 0, ()
    elif blocks is not None and same and mask_kind != "full":
        form, (bk, offs) = "blocked", blocks
    else:  # a mask that varies over queries too is whole [Sq, Sk] scores: the band cannot skip it
        form, bk, offs = "dense", 0, ()
    rope = None
    if a.rope != "none":
        assert cos is not None, "attention with rope needs the type of its cos operand"
        rope = rope_plan(a.rope == "interleaved", a.rotary_dim, a.rope_cache, a.rope_positions, q, cos)
    return AttentionPlan(
        form=form, scale=a.scale, softcap=a.softcap, causal=a.causal, window=a.window, block=a.block,
        global_tokens=a.global_tokens, q_heads=hq, kv_heads=hkv, group=hq // hkv,
        head_dim=q.shape[-1], v_head_dim=v.shape[-1], same_length=same, block_size=bk, key_offsets=offs,
        mask=mask_kind, mask_bool=mask is not None and mask.dtype.name == "BOOL", mask_shape=mask_shape, rope=rope,
    )
