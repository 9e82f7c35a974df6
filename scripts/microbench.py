"""Micro-benchmarks behind the design notes in docs/BENCHMARKS.md (Qwen2.5-0.5B shapes, fp32,
CPU, L=512). Each line prints the variants measured in alternating rounds, medians in ms.

usage: .venv/bin/python scripts/microbench.py
"""

import statistics

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import z1_jax.model.qwen2 as q2
from z1_jax.bench.common import median_time as _median_time
from z1_jax.model.config import get_preset

L, E, F, H, K, D, V = 512, 896, 4864, 14, 2, 64, 151936
rng = np.random.RandomState(0)
arr = lambda *shape: jnp.asarray(rng.randn(*shape).astype(np.float32))


def race(label, fns, rounds=5):
  for f in fns.values():
    f()
  times = {k: [] for k in fns}
  for _ in range(rounds):
    for k, f in fns.items():
      times[k].append(_median_time(f, 1))
  print(label, {k: round(statistics.median(v) * 1e3, 1) for k, v in times.items()})


# 1. attention layout: naive 5-d einsum vs heads-leading, folded query groups
q, k = arr(1, L, H, D), arr(1, L, K, D)
seg, pos = jnp.ones((1, L), jnp.int32), jnp.arange(L)[None]


def naive(q, k, v):
  s = jnp.einsum("blkgd,bskd->bkgls", q.reshape(1, L, K, H // K, D), k) * D**-0.5
  mask = (pos[:, None, :] <= pos[:, :, None])[:, None, None]
  p = jax.nn.softmax(jnp.where(mask, s, q2.NEG_INF), -1)
  return jnp.einsum("bkgls,bskd->blkgd", p, v).reshape(1, L, H, D)


kt = k.transpose(0, 2, 1, 3)
fn_naive = jax.jit(naive)
fn_ours = jax.jit(lambda q, k, v: q2.attend(q, k, v, seg, pos, seg, pos))
fn_blocks = jax.jit(lambda q, k, v: q2.attend(q, k, v, seg, pos, seg, pos, causal_blocks=True))
race("attention per layer:", {
    "naive einsum": lambda: fn_naive(q, k, k).block_until_ready(),
    "heads-leading": lambda: fn_ours(q, kt, kt).block_until_ready(),
    "+causal blocks": lambda: fn_blocks(q, kt, kt).block_until_ready()})

# 2. MLP gate/up: two matmuls vs one fused [E, 2, F] weight vs PyTorch's two linears
x, g, u = arr(L, E), arr(E, F), arr(E, F)
gu = jnp.stack([g, u], 1)
two = jax.jit(lambda x, g, u: jax.nn.silu(x @ g) * (x @ u))
fused = jax.jit(lambda x, gu: (lambda h: jax.nn.silu(h[:, 0]) * h[:, 1])(
    jnp.einsum("le,ekf->lkf", x, gu)))
tx, tg, tu = (torch.tensor(np.asarray(a)) for a in (x, g.T, u.T))
F_ = torch.nn.functional
race("gate/up block:", {
    "two matmuls": lambda: two(x, g, u).block_until_ready(),
    "fused [E,2,F]": lambda: fused(x, gu).block_until_ready(),
    "torch": lambda: F_.silu(F_.linear(tx, tg)) * F_.linear(tx, tu)})

# 3. tied LM head for one decode token: einsum on [V, E] vs x @ E.T vs PyTorch
emb, x1 = arr(V, E), arr(1, E)
head = jax.jit(lambda x, e: jnp.einsum("le,ve->lv", x, e))
head_t = jax.jit(lambda x, e: x @ e.T)
temb, tx1 = torch.tensor(np.asarray(emb)), torch.tensor(np.asarray(x1))
race("tied head, 1 token:", {
    "einsum [V,E]": lambda: head(x1, emb).block_until_ready(),
    "x @ E.T": lambda: head_t(x1, emb).block_until_ready(),
    "torch linear": lambda: F_.linear(tx1, temb)})

# 4. share of attention in a 24-layer prefill (small vocab so the head does not count)
cfg = get_preset("qwen2.5-0.5b").replace(vocab_size=1024)
graphdef, state = nnx.split(q2.create_model(cfg))
tokens = jnp.asarray(rng.randint(0, 1024, (1, L)), jnp.int32)
full = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t, last_only=True))
full(state, tokens).block_until_ready()
real_attend, q2.attend = q2.attend, (lambda q, k, v, *a, **kw: q)
no_attn = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t, last_only=True))
no_attn(state, tokens).block_until_ready()
q2.attend = real_attend
race("24-layer prefill:", {
    "full": lambda: full(state, tokens).block_until_ready(),
    "attention removed": lambda: no_attn(state, tokens).block_until_ready()})
