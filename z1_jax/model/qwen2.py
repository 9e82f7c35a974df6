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
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from z1_jax.model import attention
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


class KVCache(NamedTuple):
  """Per-layer keys/values plus, per slot, the segment id (0 = empty) and position.

  `k`/`v` are a tuple of `[B, K, S, D]` arrays (unrolled layers) or one `[layers, B, K, S, D]`
  array (scanned layers): heads before slots, the layout attention multiplies in.
  """
  k: tuple[jax.Array, ...] | jax.Array
  v: tuple[jax.Array, ...] | jax.Array
  segment_ids: jax.Array  # [B, S] int32
  positions: jax.Array  # [B, S] int32


def init_cache(cfg: Qwen2Config, batch: int, max_len: int, rules: LogicalRules | None = None,
               dtype=None) -> KVCache:
  dtype = jnp.dtype(dtype or cfg.dtype)
  shape = (batch, cfg.num_kv_heads, max_len, cfg.dim_per_head)
  axes = ("batch", "act_kv_heads", "cache_seq", "head_dim")

  def zeros(shape, axes):
    if rules is None:
      return jnp.zeros(shape, dtype)
    return jax.device_put(jnp.zeros(shape, dtype), rules.sharding(axes, shape))

  if cfg.scan_layers:
    k = zeros((cfg.num_layers, *shape), ("layers", *axes))
    v = zeros((cfg.num_layers, *shape), ("layers", *axes))
  else:
    k = tuple(zeros(shape, axes) for _ in range(cfg.num_layers))
    v = tuple(zeros(shape, axes) for _ in range(cfg.num_layers))
  def slots():
    x = jnp.zeros((batch, max_len), jnp.int32)
    return x if rules is None else jax.device_put(x, rules.sharding(("batch", "cache_seq"),
                                                                     x.shape))
  return KVCache(k, v, slots(), slots())


def write_slots(buf: jax.Array, new: jax.Array, index: jax.Array, axis: int) -> jax.Array:
  """`new` written into `buf` along `axis` from `index`: one index for every row (`[]`), or
  one per row (`[B]`, batch axis 0: a per-row `dynamic_update_slice`, a scatter that updates
  the donated buffer in place)."""
  if index.ndim == 0:
    return jax.lax.dynamic_update_slice_in_dim(buf, new, index, axis)
  return jax.vmap(lambda b, x, i: jax.lax.dynamic_update_slice_in_dim(b, x, i, axis - 1))(
      buf, new, index)


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
    """kv: None (attend within `x`) or (k_cache, v_cache, cache_seg, cache_pos, index, fresh).

    `fresh` (static): the cache was empty and `x` fills it from slot 0, so the queries need no
    key but their own (prefill).
    """
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
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, L, D]
    self_only = kv is None or kv[5]
    if kv is None:
      new_kv = None
    else:
      k_cache, v_cache, kv_seg, kv_pos, index, _ = kv
      k_cache = write_slots(k_cache, k.astype(k_cache.dtype), index, 2)
      v_cache = write_slots(v_cache, v.astype(v_cache.dtype), index, 2)
      new_kv = (k_cache, v_cache)
    if self_only:
      out = attend(q, k, v, segment_ids, positions, segment_ids, positions, causal_blocks=True,
                   impl=self.attention_impl, rules=rules)
    else:
      out = attend(q, k_cache.astype(dt), v_cache.astype(dt), segment_ids, positions, kv_seg,
                   kv_pos, impl=self.attention_impl, rules=rules)
    out = checkpoint_name(out, "attn_out")
    if rules is not None and rules.spec(("head_dim",))[0] is not None:
      # head_dim split over the mesh (serving rules, heads not dividing `tensor`): merging
      # (H, D) would gather the weight, so contract both axes and sum over the shards.
      proj = jnp.einsum("blhd,hde->ble", out, self.o_proj[...].astype(dt))
    else:
      # [H, D, E] -> [H*D, E] is free (contiguous); contracting (h, d) makes XLA:CPU copy it.
      o_proj = self.o_proj[...].astype(dt).reshape(-1, x.shape[-1])
      proj = out.reshape(*out.shape[:2], -1) @ o_proj
    return checkpoint_name(proj, "attn_proj"), new_kv


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
    attn_out, new_kv = self.attn(self.input_norm(x), segment_ids, positions, rope, kv, rules)
    x = x + attn_out
    x = x + self.mlp(self.post_attn_norm(x), rules)
    if rules is not None:
      x = rules.constrain(x, ("batch", "seq", "act_embed"))
    return x, new_kv


class Qwen2(nnx.Module):
  """`model(tokens)` -> fp32 logits `[B, L, V]`; with a cache, `(logits, cache)`."""

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
               positions: jax.Array | None = None, cache: KVCache | None = None,
               cache_index: jax.Array | int = 0, last_only: bool = False,
               prefill: bool = False, return_hidden: bool = False):
    """tokens/segment_ids/positions: int32 `[B, L]`. Defaults: one segment, positions 0..L-1.

    With `cache`, the L new tokens are written at slots `cache_index .. cache_index+L-1`
    (`cache_index` a scalar: the same slots for every row; `[B]`: each row's own) and attend to everything visible in the cache. `prefill`
    (static) says the cache holds nothing visible yet: the tokens then attend only among
    themselves (the fast path). A Python int `cache_index` is checked against the cache length
    here; a traced one cannot be (`dynamic_update_slice` would clamp it and overwrite the last
    slots), so callers check every write index on the host first (`infer.engine` does).
    `last_only` computes logits for the final position only (`[B, 1, V]`). `return_hidden`
    (no cache) returns the final normed hidden states `[B, L, E]` instead of logits, for a loss
    that applies `head_weight()` itself chunk by chunk (`model/loss.py`).
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

    if cache is not None:
      fresh = prefill
      slots = cache.segment_ids.shape[1]
      if isinstance(cache_index, int) and not 0 <= cache_index <= slots - l:
        raise ValueError(f"cache write at slots [{cache_index}, {cache_index + l}) is outside "
                         f"the cache of {slots} slots")
      index = jnp.asarray(cache_index, jnp.int32)
      kv_seg = write_slots(cache.segment_ids, segment_ids, index, 1)
      kv_pos = write_slots(cache.positions, positions, index, 1)

    def layer_fn(graphdef):
      def run(layer_state, x, kv_pair):
        kv = None if kv_pair is None else (*kv_pair, kv_seg, kv_pos, index, fresh)
        return nnx.merge(graphdef, layer_state)(x, segment_ids, positions, rope, kv, rules)
      return remat(run, cfg.remat_policy, platform)

    if cfg.scan_layers:
      graphdef, stacked = nnx.split(self.layers)
      run = layer_fn(graphdef)
      if cache is None:
        x, _ = jax.lax.scan(lambda h, s: (run(s, h, None)[0], None), x, stacked)
      else:
        def body(h, xs):
          s, k, v = xs
          h, (k, v) = run(s, h, (k, v))
          return h, (k, v)
        x, (new_k, new_v) = jax.lax.scan(body, x, (stacked, cache.k, cache.v))
    else:
      new_k, new_v = [], []
      for i, layer in enumerate(self.layers):
        graphdef, state = nnx.split(layer)
        kv_pair = None if cache is None else (cache.k[i], cache.v[i])
        x, kv_out = layer_fn(graphdef)(state, x, kv_pair)
        if kv_out is not None:
          new_k.append(kv_out[0])
          new_v.append(kv_out[1])
      new_k, new_v = tuple(new_k), tuple(new_v)

    x = self.final_norm(x)
    if return_hidden and cache is None:
      return x
    if last_only:
      x = x[:, -1:]
    head = self.head_weight()
    # Contract on the shared hidden axis of the [V, E] table: no transposed copy of it.
    logits = jnp.einsum("ble,ve->blv", x, head.astype(dt), preferred_element_type=jnp.float32)
    if rules is not None:
      logits = rules.constrain(logits, ("batch", "seq", "act_vocab"))
    if cache is None:
      return logits
    return logits, KVCache(new_k, new_v, kv_seg, kv_pos)

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
