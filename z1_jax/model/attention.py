"""Memory-efficient attention implementations, each equal to the dense reference (`qwen2._attend`).

Selected by `Qwen2Config.attention_impl` and dispatched in `qwen2.attend`:
- `blockwise`: flash-style online softmax in plain JAX with its own backward (recomputes the
  scores block by block from the saved log-sum-exp), so memory grows with L x block, not L x S,
  in the forward and the backward pass. Any platform; any mask (packed rows, KV caches).
- `splash`: TPU splash attention (Pallas) with `SegmentIds` for packed rows and grouped-query
  heads without repeating K/V (the MQA kernel per KV head), run under `jax.shard_map` over the
  mesh. Self-attention of packed rows only. Interpret mode off TPU (tests).
- `cudnn`: cuDNN flash attention on NVIDIA GPUs (`jax.nn.dot_product_attention`), causal plus a
  same-segment mask. Self-attention of packed rows only.

Shapes everywhere: q `[B, L, H, D]`, k/v `[B, K, S, D]` (heads before slots, as in the KV cache),
segment ids / positions `[B, L]` and `[B, S]`; output `[B, L, H, D]`. Queries are scaled by
1/sqrt(D) here (the splash kernel does not scale).

Self-attention of a packed row ("causal_blocks"): queries and keys are the same tokens in order,
and positions increase within each segment, so a key after its query is never visible. Splash
and cuDNN rely on that (causal by index plus equal segment ids); padding (segment 0) queries then
see other padding instead of nothing: their output is garbage either way and never reaches a
real token or the loss.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from z1_jax.errors import Z1Error
from z1_jax.model.config import ATTENTION_IMPLS

NEG_INF = float(jnp.finfo(jnp.float32).min)
BLOCK = 512  # blockwise and splash tile (clipped to the sequence); 512 suits TPU and CPU
DENSE_UP_TO = 2048  # `auto` on CPU: dense scores up to this many keys, blockwise beyond


def resolve_impl(impl: str, platform: str, self_attention: bool, q_len: int,
                 kv_len: int) -> str:
  """`auto` -> the best implementation the platform has for this call; others as given.

  Self-attention of packed rows: splash on TPU, cuDNN on GPU, and on CPU dense up to
  `DENSE_UP_TO` tokens, blockwise beyond. Attention to a KV cache: dense while the scores are
  no bigger than a `DENSE_UP_TO`-token row's (a decode step's one query over any cache),
  blockwise beyond; splash and cuDNN handle self-attention only, so asked for there they also
  leave the cache path to dense.
  """
  if impl not in ATTENTION_IMPLS:
    raise Z1Error(f"attention_impl={impl!r}: expected one of {', '.join(ATTENTION_IMPLS)}")
  small = q_len * kv_len <= DENSE_UP_TO**2
  if impl == "auto":
    if self_attention and platform == "tpu" and q_len % 128 == 0:
      return "splash"
    if self_attention and platform in ("gpu", "cuda"):
      return "cudnn"
    return "dense" if small else "blockwise"
  if impl in ("splash", "cudnn") and not self_attention:
    return "dense"
  return impl


def visible(q_seg, q_pos, kv_seg, kv_pos):
  """[B, Lq, Skv] visibility, the one mask rule of every implementation: a query sees a key iff
  both are in the same non-zero segment and the key's position is not after the query's."""
  return ((q_seg[:, :, None] == kv_seg[:, None, :]) & (kv_seg[:, None, :] != 0) &
          (kv_pos[:, None, :] <= q_pos[:, :, None]))


# -- blockwise (flash-style, plain JAX) -------------------------------------------------------

def blockwise_attention(q, k, v, q_seg, q_pos, kv_seg, kv_pos, causal: bool = False,
                        block: int = BLOCK) -> jax.Array:
  """Online-softmax attention over key blocks; `causal` (self-attention of a packed row) also
  skips the key blocks after each query block. Lengths are padded to a block multiple with
  segment 0 (invisible keys) and cut back after."""
  b, l, h, d = q.shape
  kh, s = k.shape[1], k.shape[2]
  g = h // kh
  bq, bk = min(block, l), min(block, s)
  if causal and bq != bk:
    bq = bk = min(bq, bk)
  lp, sp = -(-l // bq) * bq, -(-s // bk) * bk
  pad = lambda x, n, axis: jnp.pad(x, [(0, n if i == axis else 0) for i in range(x.ndim)])
  q = q * jnp.asarray(d**-0.5, q.dtype)
  q = q.reshape(b, l, kh, g, d).transpose(0, 2, 3, 1, 4)  # [B, K, G, L, D]
  q, q_seg, q_pos = pad(q, lp - l, 3), pad(q_seg, lp - l, 1), pad(q_pos, lp - l, 1)
  k, v = pad(k, sp - s, 2), pad(v, sp - s, 2)
  kv_seg, kv_pos = pad(kv_seg, sp - s, 1), pad(kv_pos, sp - s, 1)
  out = _flash(q, k, v, q_seg, q_pos, kv_seg, kv_pos, bq, bk, causal)
  return out[:, :, :, :l].transpose(0, 3, 1, 2, 4).reshape(b, l, h, d)


def _kv_blocks(i, bq, bk, nk, causal):
  """Key blocks that query block i reads: all, or (causal) those not after it."""
  return jnp.minimum(nk, ((i + 1) * bq + bk - 1) // bk) if causal else nk


def _scores(qi, kj, mask):
  s = jnp.einsum("bkgqd,bksd->bkgqs", qi, kj, preferred_element_type=jnp.float32)
  return jnp.where(mask[:, None, None], s, NEG_INF)


def _block_mask(q_seg, q_pos, kv_seg, kv_pos, i, j, bq, bk):
  sl = lambda x, start, n: jax.lax.dynamic_slice_in_dim(x, start, n, 1)
  return visible(sl(q_seg, i * bq, bq), sl(q_pos, i * bq, bq), sl(kv_seg, j * bk, bk),
               sl(kv_pos, j * bk, bk))


def _flash_forward(q, k, v, q_seg, q_pos, kv_seg, kv_pos, bq, bk, causal):
  b, kh, g, lp, d = q.shape
  nq, nk = lp // bq, k.shape[2] // bk

  def q_block(i):
    qi = jax.lax.dynamic_slice_in_dim(q, i * bq, bq, 3)

    def step(j, carry):
      m, lsum, acc = carry
      s = _scores(qi, jax.lax.dynamic_slice_in_dim(k, j * bk, bk, 2),
                  _block_mask(q_seg, q_pos, kv_seg, kv_pos, i, j, bq, bk))
      m_new = jnp.maximum(m, s.max(-1))
      p = jnp.exp(s - m_new[..., None])
      corr = jnp.exp(m - m_new)
      vj = jax.lax.dynamic_slice_in_dim(v, j * bk, bk, 2)
      pv = jnp.einsum("bkgqs,bksd->bkgqd", p.astype(v.dtype), vj,
                      preferred_element_type=jnp.float32)
      return m_new, lsum * corr + p.sum(-1), acc * corr[..., None] + pv

    init = (jnp.full((b, kh, g, bq), NEG_INF, jnp.float32), jnp.zeros((b, kh, g, bq), jnp.float32),
            jnp.zeros((b, kh, g, bq, d), jnp.float32))
    m, lsum, acc = jax.lax.fori_loop(0, _kv_blocks(i, bq, bk, nk, causal), step, init)
    return (acc / lsum[..., None]).astype(q.dtype), m + jnp.log(lsum)

  out, lse = jax.lax.map(q_block, jnp.arange(nq))  # [nq, B, K, G, bq, (D)]
  out = jnp.moveaxis(out, 0, 3).reshape(b, kh, g, lp, d)
  lse = jnp.moveaxis(lse, 0, 3).reshape(b, kh, g, lp)
  return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def _flash(q, k, v, q_seg, q_pos, kv_seg, kv_pos, bq, bk, causal):
  return _flash_forward(q, k, v, q_seg, q_pos, kv_seg, kv_pos, bq, bk, causal)[0]


def _flash_fwd(q, k, v, q_seg, q_pos, kv_seg, kv_pos, bq, bk, causal):
  out, lse = _flash_forward(q, k, v, q_seg, q_pos, kv_seg, kv_pos, bq, bk, causal)
  return out, (q, k, v, q_seg, q_pos, kv_seg, kv_pos, out, lse)


def _flash_bwd(bq, bk, causal, res, dout):
  q, k, v, q_seg, q_pos, kv_seg, kv_pos, out, lse = res
  b, kh, g, lp, d = q.shape
  nq, nk = lp // bq, k.shape[2] // bk
  delta = jnp.einsum("bkgqd,bkgqd->bkgq", dout.astype(jnp.float32), out.astype(jnp.float32))
  sl = jax.lax.dynamic_slice_in_dim

  def probs(i, j):
    """Recomputed softmax block, and dS = P * (dP - delta), for query block i, key block j."""
    qi, kj, vj = sl(q, i * bq, bq, 3), sl(k, j * bk, bk, 2), sl(v, j * bk, bk, 2)
    mask = _block_mask(q_seg, q_pos, kv_seg, kv_pos, i, j, bq, bk)
    p = jnp.exp(_scores(qi, kj, mask) - sl(lse, i * bq, bq, 3)[..., None])
    doi = sl(dout, i * bq, bq, 3)
    dp = jnp.einsum("bkgqd,bksd->bkgqs", doi, vj, preferred_element_type=jnp.float32)
    ds = p * (dp - sl(delta, i * bq, bq, 3)[..., None])
    return qi, kj, doi, p, ds

  def dq_block(i):
    def step(j, dq):
      _, kj, _, _, ds = probs(i, j)
      return dq + jnp.einsum("bkgqs,bksd->bkgqd", ds.astype(k.dtype), kj,
                             preferred_element_type=jnp.float32)
    return jax.lax.fori_loop(0, _kv_blocks(i, bq, bk, nk, causal), step,
                             jnp.zeros((b, kh, g, bq, d), jnp.float32))

  def dkv_block(j):
    def step(i, carry):
      dk, dv = carry
      qi, _, doi, p, ds = probs(i, j)
      dv = dv + jnp.einsum("bkgqs,bkgqd->bksd", p.astype(v.dtype), doi,
                           preferred_element_type=jnp.float32)
      dk = dk + jnp.einsum("bkgqs,bkgqd->bksd", ds.astype(q.dtype), qi,
                           preferred_element_type=jnp.float32)
      return dk, dv
    first = (j * bk) // bq if causal else 0  # earlier query blocks never see key block j
    zero = jnp.zeros((b, kh, bk, d), jnp.float32)
    return jax.lax.fori_loop(first, nq, step, (zero, zero))

  dq = jnp.moveaxis(jax.lax.map(dq_block, jnp.arange(nq)), 0, 3).reshape(q.shape)
  dk, dv = jax.lax.map(dkv_block, jnp.arange(nk))  # [nk, B, K, bk, D]
  dk = jnp.moveaxis(dk, 0, 2).reshape(k.shape)
  dv = jnp.moveaxis(dv, 0, 2).reshape(v.shape)
  int_zero = lambda x: np.zeros(x.shape, jax.dtypes.float0)
  return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), int_zero(q_seg),
          int_zero(q_pos), int_zero(kv_seg), int_zero(kv_pos))


_flash.defvjp(_flash_fwd, _flash_bwd)


# -- splash (TPU) -----------------------------------------------------------------------------

def splash_attention(q, k, v, segment_ids, mesh=None, rules=None, interpret: bool = False,
                     block: int = BLOCK) -> jax.Array:
  """TPU splash attention for self-attention of packed rows, under `shard_map` over `mesh`.

  Batch is split as `rules` split it, heads over `tensor`: each shard runs the MQA kernel once
  per local KV head on that head's query group (no K/V repeat). With KV heads replicated over
  `tensor` (fewer KV heads than `tensor`), each shard picks the one KV head its query heads use.
  """
  from jax.experimental.pallas.ops.tpu.splash_attention import (
      splash_attention_kernel as splash, splash_attention_mask as masks)
  from jax.sharding import PartitionSpec as P
  b, l, h, d = q.shape
  kh = k.shape[1]
  if l % 128:
    raise Z1Error(f"splash attention needs a sequence length divisible by 128, got {l}; use "
                  "attention_impl='blockwise' or pad the rows")
  blk = math.gcd(min(block, l), l)
  sizes = splash.BlockSizes(block_q=blk, block_kv=blk, block_kv_compute=blk, block_q_dkv=blk,
                            block_kv_dkv=blk, block_kv_dkv_compute=blk, block_q_dq=blk,
                            block_kv_dq=blk)
  q = q * jnp.asarray(d**-0.5, q.dtype)

  if rules is None or mesh is None or mesh.size == 1:
    q_spec, k_spec, seg_spec = P(), P(), P()
  else:
    q_spec = rules.spec(("batch", "seq", "act_heads", "head_dim"), q.shape)
    k_spec = rules.spec(("batch", "act_kv_heads", "seq", "head_dim"), k.shape)
    seg_spec = rules.spec(("batch", "seq"), segment_ids.shape)
    if q_spec[1] is not None or k_spec[2] is not None:
      raise Z1Error("splash attention cannot split the sequence over the mesh: set the 'seq' "
                    "rule to no mesh axes")
    # The kernel works on whole heads: a layout that splits head_dim (the serving rules when the
    # query heads do not divide over `tensor`) is gathered to whole heads for this call.
    q_spec, k_spec = P(*q_spec[:3], None), P(*k_spec[:3], None)
  head_axis = q_spec[2] if len(q_spec) > 2 else None
  kv_split = len(k_spec) > 1 and k_spec[1] is not None

  def local(q, k, v, seg):
    lb, _, lh, _ = q.shape
    lk = k.shape[1]
    if kv_split or head_axis is None:
      groups = lh // lk
      kv_index = None
    else:  # KV heads replicated over the head axis: this shard's query heads share one KV head
      groups = h // kh
      if groups % lh:
        raise Z1Error(f"splash attention: {lh} query heads per shard straddle KV heads "
                      f"(groups of {groups}); choose tensor so that KV heads divide it or it "
                      "divides the KV heads")
      kv_index = jax.lax.axis_index(head_axis) * lh // groups
      groups = lh
    mask = masks.MultiHeadMask([masks.CausalMask((l, l))] * groups)
    kernel = splash.make_splash_mqa_single_device(mask=mask, block_sizes=sizes,
                                                  interpret=interpret)
    if kv_index is not None:
      k = jax.lax.dynamic_slice_in_dim(k, kv_index, 1, 1)
      v = jax.lax.dynamic_slice_in_dim(v, kv_index, 1, 1)
      lk = 1
    qg = q.reshape(lb, l, lk, groups, d).transpose(0, 2, 3, 1, 4)  # [b, K, G, L, D]
    per_head = lambda qh, kh_, vh, s: kernel(qh, kh_, vh, splash.SegmentIds(q=s, kv=s))
    per_row = lambda qr, kr, vr, s: jax.vmap(per_head, (0, 0, 0, None))(qr, kr, vr, s)
    out = jax.vmap(per_row)(qg, k, v, seg)  # [b, K, G, L, D]
    return out.transpose(0, 3, 1, 2, 4).reshape(lb, l, lh, d)

  if rules is None or mesh is None or mesh.size == 1:
    return local(q, k, v, segment_ids)
  return jax.shard_map(local, mesh=mesh, in_specs=(q_spec, k_spec, k_spec, seg_spec),
                       out_specs=q_spec, check_vma=False)(q, k, v, segment_ids)


# -- cuDNN (NVIDIA GPU) -----------------------------------------------------------------------

def cudnn_attention(q, k, v, segment_ids, implementation: str = "cudnn") -> jax.Array:
  """cuDNN flash attention for self-attention of packed rows: causal plus a same-segment mask
  (`[B, 1, L, L]` booleans, which cuDNN applies as a bias). `implementation="xla"` runs the
  same call through XLA (how the CPU tests check the layout and mask)."""
  b, l, h, d = q.shape
  same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, S, K, D]: cuDNN's BTNH
  return jax.nn.dot_product_attention(q, k, v, mask=same, is_causal=True, scale=d**-0.5,
                                      implementation=implementation)
