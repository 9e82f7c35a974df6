"""Qwen2 decoder-only LM in Flax NNX.

Layout of parameters (HF name -> ours, `E` hidden, `H`/`K` query/KV heads, `D` head dim):
  embed_tokens [V, E] -> embed [V, E]             lm_head [V, E] -> lm_head [V, E] (untied only)
  q_proj [H*D, E] -> attn.q_proj [E, H, D]        o_proj [E, H*D] -> attn.o_proj [H, D, E]
  gate/up_proj [F, E] -> mlp.gate_up [E, 2, F]    down_proj [E, F] -> mlp.down [F, E]
Every parameter carries its logical axes (`Param.axes`); `sharding.LogicalRules` turns them into
mesh shardings. Attention masks come only from segment ids and positions.
"""

from __future__ import annotations

import functools
import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from z1_jax.model import attention, paged
from z1_jax.model.paged import PagedKV
from z1_jax.model.attention import NEG_INF, visible
from z1_jax.model.config import Qwen2Config
from z1_jax.model.remat import remat
from z1_jax.model.sharding import LogicalRules

def _param(rngs: nnx.Rngs | None, shape, axes, dtype, init: str = "normal",
           stack: int | None = None) -> nnx.Param:
  if stack is not None:
    shape, axes = (stack, *shape), ("layers", *axes)
  if init == "ones":
    value = jnp.ones(shape, dtype)
  elif init == "zeros":
    value = jnp.zeros(shape, dtype)
  else:
    value = (0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
  return nnx.Param(value, axes=tuple(axes))


def init_pools(cfg: Qwen2Config, num_pages: int, page_size: int, rules: LogicalRules | None = None,
               dtype=None) -> tuple[jax.Array, ...]:
  """The paged KV cache's pools, one `[num_pages, page_size, 2K, D]` array per layer
  (`model/paged.py`), zeroed and laid out on `rules`' mesh: pages over the batch's axes (so
  `num_pages` counts every shard's pages), KV heads over `tensor`."""
  dtype = jnp.dtype(dtype or cfg.dtype)
  shape = (num_pages, page_size, 2 * cfg.num_kv_heads, cfg.dim_per_head)
  if rules is None:
    return tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
  from z1_jax.model.paged import specs
  sharding = jax.sharding.NamedSharding(rules.mesh, specs(rules, cfg.num_kv_heads)[0])
  zeros = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)
  return tuple(zeros() for _ in range(cfg.num_layers))


def rope_tables(positions: jax.Array, head_dim: int, theta: float):
  """cos/sin `[B, L, D]` in fp32, rotate-half layout as in HF."""
  inv_freq = 1.0 / (theta**(jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  x32 = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  return (x32 * cos[:, :, None] + rotated * sin[:, :, None]).astype(x.dtype)


CAUSAL_BLOCK = 128


def attend(q, k, v, q_seg, q_pos, kv_seg, kv_pos, causal_blocks: bool = False,
           impl: str = "dense", rules: LogicalRules | None = None) -> jax.Array:
  """Grouped-query attention; K/V are never repeated. q `[B, L, H, D]`, k/v `[B, K, S, D]`.

  A query sees a key iff both are in the same (non-zero) segment and the key's position is not
  after the query's. Rows with no visible key (padding) produce finite garbage, never NaN.
  `causal_blocks` (queries and keys are the same row, in order: packed rows, prefill) skips the
  key blocks after each query block, which are never visible: about 40% less work at L=512.
  `impl` (`Qwen2Config.attention_impl`): dense (here), or blockwise / splash / cudnn / auto from
  `model/attention.py`; splash runs under `shard_map` over `rules.mesh`.
  """
  mesh = None if rules is None else rules.mesh
  platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
  impl = attention.resolve_impl(impl, platform, causal_blocks, q.shape[1], k.shape[2])
  if impl == "blockwise":
    return attention.blockwise_attention(q, k, v, q_seg, q_pos, kv_seg, kv_pos, causal_blocks)
  if impl == "splash":
    return attention.splash_attention(q, k, v, q_seg, mesh, rules, interpret=platform != "tpu")
  if impl == "cudnn":
    return attention.cudnn_attention(q, k, v, q_seg)
  l, s = q.shape[1], k.shape[2]
  c = CAUSAL_BLOCK
  if causal_blocks and l == s and l > c and l % c == 0:
    return jnp.concatenate([
        _attend(q[:, i:i + c], k[:, :, :i + c], v[:, :, :i + c], q_seg[:, i:i + c],
                q_pos[:, i:i + c], kv_seg[:, :i + c], kv_pos[:, :i + c])
        for i in range(0, l, c)], axis=1)
  return _attend(q, k, v, q_seg, q_pos, kv_seg, kv_pos)


def _attend(q, k, v, q_seg, q_pos, kv_seg, kv_pos) -> jax.Array:
  # Query groups folded into rows, heads leading: both products are plain batched matmuls,
  # several times faster on CPU than the naive 5-d einsum.
  b, l, h, d = q.shape
  kh, s = k.shape[1], k.shape[2]
  g = h // kh
  q = q * jnp.asarray(d**-0.5, q.dtype)  # scale the [L, H, D] queries, not the [L, S] scores
  q = q.reshape(b, l, kh, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kh, g * l, d)
  scores = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32)
  scores = scores.reshape(b, kh, g, l, s)
  mask = visible(q_seg, q_pos, kv_seg, kv_pos)
  scores = jnp.where(mask[:, None, None], scores, NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, kh, g * l, s)
  out = jnp.einsum("bkqs,bksd->bkqd", probs, v).reshape(b, kh, g, l, d)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, l, h, d)


class RMSNorm(nnx.Module):

  def __init__(self, dim: int, eps: float, dtype, stack=None):
    self.eps = eps
    self.scale = _param(None, (dim,), ("norm",), dtype, "ones", stack)

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return normed.astype(x.dtype) * self.scale[...].astype(x.dtype)


class Attention(nnx.Module):

  def __init__(self, cfg: Qwen2Config, rngs: nnx.Rngs, stack=None):
    e, h, k, d, pd = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head,
                      cfg.param_dtype)
    self.q_proj = _param(rngs, (e, h, d), ("embed", "q_heads", "head_dim"), pd, stack=stack)
    self.k_proj = _param(rngs, (e, k, d), ("embed", "kv_heads", "head_dim"), pd, stack=stack)
    self.v_proj = _param(rngs, (e, k, d), ("embed", "kv_heads", "head_dim"), pd, stack=stack)
    self.q_bias = _param(rngs, (h, d), ("q_heads", "head_dim"), pd, "zeros", stack)
    self.k_bias = _param(rngs, (k, d), ("kv_heads", "head_dim"), pd, "zeros", stack)
    self.v_bias = _param(rngs, (k, d), ("kv_heads", "head_dim"), pd, "zeros", stack)
    self.o_proj = _param(rngs, (h, d, e), ("q_heads", "head_dim", "embed"), pd, stack=stack)
    self.attention_impl = cfg.attention_impl  # static: see model/attention.py

  def __call__(self, x, segment_ids, positions, rope, kv, rules: LogicalRules | None):
    """kv: None (attend within `x`), or `(pool, cache)` for a paged KV cache (`model/paged.py`):
    the new keys/values are written into this layer's `pool` and the queries attend over the
    rows' pages. Returns (output, the new pool or None)."""
    dt = x.dtype
    proj = lambda w, b: jnp.einsum("ble,ehd->blhd", x, w[...].astype(dt)) + b[...].astype(dt)
    q = apply_rope(proj(self.q_proj, self.q_bias), *rope)
    k = apply_rope(proj(self.k_proj, self.k_bias), *rope)
    v = proj(self.v_proj, self.v_bias)
    if rules is not None:
      q = rules.constrain(q, ("batch", "seq", "act_heads", "head_dim"))
      k = rules.constrain(k, ("batch", "seq", "act_kv_heads", "head_dim"))
      v = rules.constrain(v, ("batch", "seq", "act_kv_heads", "head_dim"))
    # Named for remat policies (model/remat.py).
    q, k, v = checkpoint_name(q, "query"), checkpoint_name(k, "key"), checkpoint_name(v, "value")
    new_pool = None
    if kv is None:
      kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, L, D]
      out = attend(q, kt, vt, segment_ids, positions, segment_ids, positions, causal_blocks=True,
                   impl=self.attention_impl, rules=rules)
    else:
      pool, cache = kv
      out, new_pool = paged.write_and_attend(q, k, v, pool, cache, positions, rules)
    out = checkpoint_name(out, "attn_out")
    if rules is not None and rules.spec(("head_dim",))[0] is not None:
      # head_dim split over the mesh (serving rules, heads not dividing `tensor`): merging
      # (H, D) would gather the weight, so contract both axes and sum over the shards.
      proj = jnp.einsum("blhd,hde->ble", out, self.o_proj[...].astype(dt))
    else:
      # [H, D, E] -> [H*D, E] is free (contiguous); contracting (h, d) makes XLA:CPU copy it.
      o_proj = self.o_proj[...].astype(dt).reshape(-1, x.shape[-1])
      proj = out.reshape(*out.shape[:2], -1) @ o_proj
    return checkpoint_name(proj, "attn_proj"), new_pool


class MLP(nnx.Module):

  def __init__(self, cfg: Qwen2Config, rngs: nnx.Rngs, stack=None):
    e, f, pd = cfg.hidden_size, cfg.intermediate_size, cfg.param_dtype
    # gate and up projections in one [E, 2, F] weight: one matmul, ~25% faster on CPU than two
    self.gate_up = _param(rngs, (e, 2, f), ("embed", None, "mlp"), pd, stack=stack)
    self.down = _param(rngs, (f, e), ("mlp", "embed"), pd, stack=stack)

  def __call__(self, x, rules):
    dt = x.dtype
    gate_up = jnp.einsum("ble,ekf->blkf", x, self.gate_up[...].astype(dt))
    h = jax.nn.silu(gate_up[:, :, 0]) * gate_up[:, :, 1]
    if rules is not None:
      h = rules.constrain(h, ("batch", "seq", "act_mlp"))
    h = checkpoint_name(h, "mlp_hidden")
    return checkpoint_name(h @ self.down[...].astype(dt), "mlp_out")


class DecoderLayer(nnx.Module):

  def __init__(self, cfg: Qwen2Config, rngs: nnx.Rngs, stack: int | None = None):
    self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype, stack)
    self.attn = Attention(cfg, rngs, stack)
    self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype, stack)
    self.mlp = MLP(cfg, rngs, stack)

  def __call__(self, x, segment_ids, positions, rope, kv, rules):
    attn_out, new_pool = self.attn(self.input_norm(x), segment_ids, positions, rope, kv, rules)
    x = x + attn_out
    x = x + self.mlp(self.post_attn_norm(x), rules)
    if rules is not None:
      x = rules.constrain(x, ("batch", "seq", "act_embed"))
    return x, new_pool


class Qwen2(nnx.Module):
  """`model(tokens)` -> fp32 logits `[B, L, V]`; with a paged cache, `(logits, pools)`."""

  def __init__(self, cfg: Qwen2Config, rngs: nnx.Rngs, rules: LogicalRules | None = None):
    self.cfg = cfg
    self.rules = rules  # static: activation sharding constraints (None: no constraints)
    pd = cfg.param_dtype
    self.embed = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), pd)
    if cfg.scan_layers:
      self.layers = DecoderLayer(cfg, rngs, stack=cfg.num_layers)
    else:
      self.layers = nnx.List([DecoderLayer(cfg, rngs) for _ in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd)
    if not cfg.tie_word_embeddings:
      self.lm_head = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), pd)

  def __call__(self, tokens: jax.Array, segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None, cache: PagedKV | None = None,
               last_only: bool = False, logits: bool = True, return_hidden: bool = False):
    """tokens/segment_ids/positions: int32 `[B, L]`. Defaults: one segment, positions 0..L-1.

    With a paged `cache` (`model/paged.py`: the pools, the rows' page tables, the positions
    their queries see, each new token's slot), the L new tokens' keys and values are written
    into the pools and the tokens attend over their rows' pages (`segment_ids` are then
    unused: visibility is the position rule); returns `(logits, new pools)`, logits None when
    `logits=False` (a prefill that needs none). `last_only` computes logits for the final
    position only (`[B, 1, V]`). `return_hidden` (no cache) returns the final normed hidden
    states `[B, L, E]` instead of logits, for a loss that applies `head_weight()` itself chunk
    by chunk (`model/loss.py`).
    """
    cfg, rules = self.cfg, self.rules
    b, l = tokens.shape
    if segment_ids is None:
      segment_ids = jnp.ones((b, l), jnp.int32)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    dt = jnp.dtype(cfg.dtype)
    x = self.embed[...][tokens].astype(dt)
    if rules is not None:
      x = rules.constrain(x, ("batch", "seq", "act_embed"))
    rope = rope_tables(positions, cfg.dim_per_head, cfg.rope_theta)
    platform = rules.mesh.devices.flat[0].platform if rules is not None else jax.default_backend()
    if cache is not None and cfg.scan_layers:
      raise ValueError("a paged KV cache needs unrolled layers (decoding unrolls them: "
                       "z1_jax.infer.load.unrolled)")

    def layer_fn(graphdef):
      def run(layer_state, x, kv):
        return nnx.merge(graphdef, layer_state)(x, segment_ids, positions, rope, kv, rules)
      return remat(run, cfg.remat_policy, platform)

    if cfg.scan_layers:
      graphdef, stacked = nnx.split(self.layers)
      run = layer_fn(graphdef)
      x, _ = jax.lax.scan(lambda h, s: (run(s, h, None)[0], None), x, stacked)
    else:
      pools = []
      for i, layer in enumerate(self.layers):
        graphdef, state = nnx.split(layer)
        kv = None if cache is None else (cache.pools[i], cache)
        x, pool = layer_fn(graphdef)(state, x, kv)
        pools.append(pool)

    x = self.final_norm(x)
    if return_hidden and cache is None:
      return x
    out = None
    if logits or cache is None:
      if last_only:
        x = x[:, -1:]
      head = self.head_weight()
      # Contract on the shared hidden axis of the [V, E] table: no transposed copy of it.
      out = jnp.einsum("ble,ve->blv", x, head.astype(dt), preferred_element_type=jnp.float32)
      if rules is not None:
        out = rules.constrain(out, ("batch", "seq", "act_vocab"))
    if cache is None:
      return out
    return out, tuple(pools)

  def head_weight(self) -> jax.Array:
    """The LM head's `[V, E]` table (the embedding when tied)."""
    return (self.embed if self.cfg.tie_word_embeddings else self.lm_head)[...]


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def abstract_model(cfg: Qwen2Config, rules: LogicalRules | None = None) -> Qwen2:
  """The model with `ShapeDtypeStruct` leaves: shapes, dtypes and logical axes, no memory."""
  return nnx.eval_shape(lambda: Qwen2(cfg, nnx.Rngs(0), rules))


def state_shardings(state: nnx.State, rules: LogicalRules) -> nnx.State:
  """The target `NamedSharding` of every parameter, from its logical axes."""
  def one(path, v):
    name = "parameter " + ".".join(str(getattr(k, "key", k)) for k in path)
    return v.replace(rules.sharding(v.axes, v.get_value().shape, name))
  return jax.tree.map_with_path(one, state, is_leaf=_is_var)


def create_model(cfg: Qwen2Config, rules: LogicalRules | None = None, seed: int = 0) -> Qwen2:
  """Random-initialised model, created already sharded (one jitted init, no host copy)."""
  graphdef, abstract = nnx.split(abstract_model(cfg, rules))
  out = None if rules is None else state_shardings(abstract, rules)

  @functools.partial(jax.jit, out_shardings=out)
  def init():
    return nnx.state(Qwen2(cfg, nnx.Rngs(seed), rules))

  return nnx.merge(graphdef, init())
