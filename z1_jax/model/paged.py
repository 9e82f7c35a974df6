"""The paged KV cache: a pool of fixed-size pages per layer, and attention over the pages a row
holds (the decode engine's cache; `infer.engine` owns allocation).

Layout (the one the TPU kernel reads): per layer one array `[pages, page_size, 2K, D]` with K
and V interleaved on axis 2 (K of head h at 2h, V at 2h+1). A row's page table `[MP]` lists
its pages in order (position p lives in page `table[p // page_size]` at offset
`p % page_size`); page 0 of every shard is the null page, never allocated, where unused table
entries point. A forward pass over a paged cache gets, per row, the page table, `lengths` (the
positions its queries may see: the last query's position + 1) and, per new token, its flat
slot `page * page_size + offset` (an out-of-range slot drops the write: padding, idle rows).

Attention:
- `xla` (CPU, GPU, and the reference): online softmax over blocks of pages, gathered per row,
  in a loop whose trip count is the longest live row's block count: a step costs what the rows
  hold, not the pool or the longest admissible sequence. One compile serves every length.
- `rpa` (TPU): JAX's Pallas ragged paged attention kernel (decode and prefill chunks), run on
  each shard's pages.
Both write the new keys and values into the pool first (the kernel only reads).

Sharding: the pool's page axis is split over the batch's mesh axes (`data`; each shard has its
own pages and page ids are local to it) and the heads over `tensor`; writing and attending run
under `shard_map`, so no page ever crosses a shard. The KV heads must divide over `tensor`
(`model.serving.padded_config` repeats them when they do not).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from z1_jax.errors import Z1Error

NEG_INF = float(jnp.finfo(jnp.float32).min)
BLOCK_TOKENS = 256  # xla path: keys per online-softmax step (rounded to whole pages)
PAGED_IMPLS = ("auto", "xla", "rpa")


class PagedKV(NamedTuple):
  """A paged cache as one forward pass sees it (see the module docstring)."""
  pools: tuple[jax.Array, ...]  # per layer [pages, page_size, 2K, D]
  pages: jax.Array  # [B, MP] int32 page tables (shard-local page ids)
  lengths: jax.Array  # [B] int32 positions visible to the row's queries
  slots: jax.Array  # [B, L] int32 flat slot of each new token (out of range: not written)


def combine_kv(k: jax.Array, v: jax.Array) -> jax.Array:
  """`[..., K, D]` keys and values -> `[..., 2K, D]` interleaved (K_h at 2h, V_h at 2h+1)."""
  return jnp.stack([k, v], axis=-2).reshape(*k.shape[:-2], 2 * k.shape[-2], k.shape[-1])


def write_kv(pool: jax.Array, k: jax.Array, v: jax.Array, slots: jax.Array) -> jax.Array:
  """Scatters new keys/values `[B, L, K, D]` into `pool` at `slots [B, L]` (flat slot ids;
  out-of-range ones are dropped). In place when the pool is donated."""
  n, ps, k2, d = pool.shape
  flat = pool.reshape(n * ps, k2, d)
  new = combine_kv(k, v).astype(pool.dtype).reshape(-1, k2, d)
  return flat.at[slots.reshape(-1)].set(new, mode="drop").reshape(n, ps, k2, d)


def attend_xla(q: jax.Array, pool: jax.Array, pages: jax.Array, lengths: jax.Array,
               q_pos: jax.Array, block_tokens: int = BLOCK_TOKENS) -> jax.Array:
  """q `[B, L, H, D]` over each row's pages: query (b, j) sees positions
  `p <= q_pos[b, j]` and `p < lengths[b]`. fp32 softmax; output `[B, L, H, D]` in q's dtype.

  The loop runs `ceil(max(lengths) / block)` times (a dynamic trip count: one compile for
  every length); each step gathers one block of pages per row."""
  b, l, h, d = q.shape
  _, ps, k2, _ = pool.shape
  kh = k2 // 2
  g = h // kh
  bp = max(1, block_tokens // ps)  # pages per block
  blk = bp * ps
  mp = pages.shape[1]
  if mp % bp:
    pages = jnp.pad(pages, ((0, 0), (0, bp - mp % bp)))
  qs = (q * jnp.asarray(d**-0.5, q.dtype)).reshape(b, l, kh, g, d)
  qs = qs.transpose(0, 2, 3, 1, 4).reshape(b, kh, g * l, d)  # query g*L + j
  qp = jnp.tile(q_pos, (1, g))  # [B, G*L]
  lim = lengths[:, None, None]

  def step(j, carry):
    m, lsum, acc = carry
    idx = jax.lax.dynamic_slice_in_dim(pages, j * bp, bp, 1)  # [B, bp]
    kv = pool[idx].reshape(b, blk, kh, 2, d)
    kj, vj = kv[:, :, :, 0], kv[:, :, :, 1]  # [B, blk, K, D]
    s = jnp.einsum("bkqd,bskd->bkqs", qs, kj.astype(qs.dtype),
                   preferred_element_type=jnp.float32)
    kpos = j * blk + jnp.arange(blk, dtype=jnp.int32)
    mask = (kpos[None, None] <= qp[:, :, None]) & (kpos[None, None] < lim)  # [B, G*L, blk]
    s = jnp.where(mask[:, None], s, NEG_INF)
    m_new = jnp.maximum(m, s.max(-1))
    p = jnp.exp(s - m_new[..., None])
    corr = jnp.exp(m - m_new)
    pv = jnp.einsum("bkqs,bskd->bkqd", p.astype(vj.dtype), vj,
                    preferred_element_type=jnp.float32)
    return m_new, lsum * corr + p.sum(-1), acc * corr[..., None] + pv

  init = (jnp.full((b, kh, g * l), NEG_INF, jnp.float32),
          jnp.zeros((b, kh, g * l), jnp.float32), jnp.zeros((b, kh, g * l, d), jnp.float32))
  blocks = (jnp.max(lengths) + blk - 1) // blk
  _, lsum, acc = jax.lax.fori_loop(0, blocks, step, init)
  out = (acc / lsum[..., None]).astype(q.dtype).reshape(b, kh, g, l, d)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, l, h, d)


def rpa_block_sizes(page_size: int, pages_per_row: int, queries: int) -> tuple[int, int]:
  """Explicit block sizes for the Pallas kernel (its tuned table only knows TPU v5/v6 and
  raises elsewhere): pages per block covering about 512-2,048 keys, dividing the table."""
  target = max(1, 1024 // page_size)
  pages = 1
  while pages * 2 <= min(target, pages_per_row) and pages_per_row % (pages * 2) == 0:
    pages *= 2
  q_block = 1
  while q_block * 2 <= min(queries, 32):
    q_block *= 2
  return pages, q_block


def attend_rpa(q: jax.Array, pool: jax.Array, pages: jax.Array, lengths: jax.Array,
               interpret: bool = False, kernel=None) -> jax.Array:
  """The TPU kernel (`jax.experimental.pallas.ops.tpu.ragged_paged_attention`) on one shard:
  every row is a sequence of L queries (padding queries included) at positions
  `lengths - L .. lengths - 1`, which is how the engine lays out decode steps (L = 1) and
  prefill chunks. `interpret` runs it in TPU interpret mode, `kernel` replaces the installed
  kernel function (tests on CPU: JAX 0.10's interpreter needs a patched copy)."""
  if kernel is None:
    from jax.experimental.pallas.ops.tpu.ragged_paged_attention import kernel as rpa
    kernel = rpa.ragged_paged_attention
  b, l, h, d = q.shape
  ps = pool.shape[1]
  mp = pages.shape[1]
  kv_pages, q_block = rpa_block_sizes(ps, mp, l)
  cu = jnp.arange(b + 1, dtype=jnp.int32) * l
  call = functools.partial(
      kernel, q.reshape(b * l, h, d), pool, lengths.astype(jnp.int32),
      pages.astype(jnp.int32), cu, jnp.asarray([b], jnp.int32), sm_scale=d**-0.5,
      num_kv_pages_per_block=kv_pages, num_queries_per_block=q_block)
  if interpret:
    from jax.experimental.pallas import tpu as pltpu
    with pltpu.force_tpu_interpret_mode():
      out = call()
  else:
    out = call()
  return out.reshape(b, l, h, d)


def resolve_impl(impl: str, platform: str) -> str:
  if impl not in PAGED_IMPLS:
    raise Z1Error(f"paged attention {impl!r}: expected one of {', '.join(PAGED_IMPLS)}")
  if impl == "auto":
    return "rpa" if platform == "tpu" else "xla"
  return impl


def specs(rules, kv_heads: int):
  """PartitionSpecs (pool, per-row arrays, per-row-and-head arrays) for `shard_map`: pages
  and rows over the batch's mesh axes, heads over the KV heads' axes. Every shard must hold
  whole KV heads and their query heads (no replicated or head_dim-split attention, which would
  repeat or gather the cache's work): anything else is refused."""
  table = dict(rules.rules)
  mesh = rules.mesh
  live = lambda name: tuple(a for a in table.get(name, ()) if mesh.shape[a] > 1)
  batch, heads = live("batch"), live("act_kv_heads")
  shards = 1
  for a in heads:
    shards *= mesh.shape[a]
  if live("head_dim") or live("act_heads") != heads or kv_heads % shards:
    split = "x".join(live("act_heads") or live("head_dim")) or "-"
    raise Z1Error(f"the paged KV cache needs whole KV heads on every shard: {kv_heads} KV heads "
                  f"do not divide over the {split} mesh axes the attention is split on; load "
                  "the model with z1_jax.infer.load.load_for_decoding (it pads query heads and "
                  "repeats KV heads to fit the mesh)")
  ax = lambda axes: None if not axes else axes[0] if len(axes) == 1 else axes
  return P(ax(batch), None, ax(heads), None), ax(batch), ax(heads)


def write_and_attend(q, k, v, pool, cache: PagedKV, q_pos, rules=None, impl: str = "auto"):
  """One layer: writes k/v `[B, L, K, D]` at `cache.slots`, then attends q `[B, L, H, D]` over
  each row's pages. Returns (attention output `[B, L, H, D]`, the new pool)."""
  mesh = None if rules is None else rules.mesh
  platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
  impl = resolve_impl(impl, platform)

  def local(q, k, v, pool, pages, lengths, slots, q_pos):
    pool = write_kv(pool, k, v, slots)
    if impl == "rpa":
      out = attend_rpa(q, pool, pages, lengths, interpret=platform != "tpu")
    else:
      out = attend_xla(q, pool, pages, lengths, q_pos)
    return out, pool

  if mesh is None or mesh.size == 1:
    return local(q, k, v, pool, cache.pages, cache.lengths, cache.slots, q_pos)
  pool_spec, rows, heads = specs(rules, k.shape[2])
  act = P(rows, None, heads, None)
  row2 = P(rows, None)
  return jax.shard_map(local, mesh=mesh,
                       in_specs=(act, act, act, pool_spec, row2, P(rows), row2, row2),
                       out_specs=(act, pool_spec), check_vma=False)(
                           q, k, v, pool, cache.pages, cache.lengths, cache.slots, q_pos)


def copy_pages(pool: jax.Array, src: jax.Array, dst: jax.Array, rules=None) -> jax.Array:
  """Copies page `src[s, i]` to `dst[s, i]` within data shard s (`[shards, M]` local ids; a
  dst out of range is dropped): a branch's private copy of a shared page."""
  def local(pool, src, dst):
    return pool.at[dst[0]].set(pool[src[0]], mode="drop")

  mesh = None if rules is None else rules.mesh
  if mesh is None or mesh.size == 1:
    return local(pool, src, dst)
  pool_spec, rows, _ = specs(rules, pool.shape[2] // 2)
  return jax.shard_map(local, mesh=mesh, in_specs=(pool_spec, P(rows, None), P(rows, None)),
                       out_specs=pool_spec, check_vma=False)(pool, src, dst)
