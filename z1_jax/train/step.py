"""The jitted train step of a run, and its abstract inputs.

`build_train_step(cfg, mesh)` allocates nothing: it returns the jitted step (explicit in/out
shardings, the state donated) together with `jax.ShapeDtypeStruct` state and batch carrying
their shardings, so a plan can compile the step for any mesh, including a TPU topology:

    ts = build_train_step(cfg, mesh)
    compiled = ts.step.trace(*ts.abstract()).lower().compile()

The train state is a plain pytree:
  {"params": <pure dict of the model's parameters>, "opt_state": <optax state>,
   "step": int32 scalar, "rng": uint32[2] key data}
A batch is a dict of `[global_batch, seq_len]` int32 arrays (`z1_jax.data.pack.ROW_FIELDS`)
sharded `(batch, seq)`. Gradient accumulation splits it inside the step into `grad_accum`
micro-batches (row `m * grad_accum + a` goes to micro-batch `a`: each device keeps its own
rows, no data moves) and sums gradients with `lax.scan`; dividing by the global target count
gives the update of one large batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from z1_jax.config import ConfigError, RunConfig, model_config
from z1_jax.data.pack import ROW_FIELDS
from z1_jax.model.config import Qwen2Config
from z1_jax.model.qwen2 import abstract_model, state_shardings
from z1_jax.model.sharding import LogicalRules, make_mesh
from z1_jax.train.loss import token_loss
from z1_jax.train.optim import make_optimizer

DEFAULT_TOTAL_STEPS = 1000  # schedule length when the data (and so the run length) is unknown


def make_run_mesh(cfg: RunConfig, devices=None) -> Mesh:
  m = cfg.mesh
  try:
    return make_mesh(m.data, m.fsdp, m.tensor, devices=devices)
  except ValueError as e:
    raise ConfigError(f"{cfg.source}: [mesh] data={m.data}, fsdp={m.fsdp}, tensor={m.tensor}: "
                      f"{e}") from None


def check_batch_fits(cfg: RunConfig, mesh: Mesh) -> None:
  """The micro-batch must split evenly over the batch axes (`data` x `fsdp`)."""
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  micro = cfg.micro_batch()
  if micro % shards:
    raise ConfigError(
        f"{cfg.source}: train.global_batch = {cfg.train.global_batch} / train.grad_accum = "
        f"{cfg.train.grad_accum} = {micro} rows per micro-batch is not divisible by the mesh's "
        f"data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']} = {shards} batch shards")


@dataclasses.dataclass
class TrainStep:
  step: Callable  # jitted (state, batch) -> (state, metrics); state donated
  eval: Callable  # jitted (params, batch) -> (loss sum, target count)
  abstract_state: Any
  abstract_batch: dict[str, jax.ShapeDtypeStruct]
  state_sharding: Any
  batch_sharding: NamedSharding
  graphdef: Any
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  model_cfg: Qwen2Config
  rules: LogicalRules

  def abstract(self) -> tuple[Any, dict[str, jax.ShapeDtypeStruct]]:
    """(state, batch) as sharded `ShapeDtypeStruct`s: `step.trace(*ts.abstract())`."""
    return self.abstract_state, self.abstract_batch

  def init_state(self, params, seed: int) -> Any:
    """A fresh train state around `params` (a pure dict already on the mesh)."""
    opt_sharding = self.state_sharding["opt_state"]
    opt_state = jax.jit(self.optimizer.init, out_shardings=opt_sharding)(params)
    replicated = NamedSharding(self.rules.mesh, P())
    # built by a jitted function: device_put cannot target other processes' devices
    step, rng = jax.jit(lambda: (jnp.zeros((), jnp.int32),
                                 jax.random.key_data(jax.random.key(seed))),
                        out_shardings=(replicated, replicated))()
    return {"params": params, "opt_state": opt_state, "step": step, "rng": rng}


def build_train_step(cfg: RunConfig, mesh: Mesh, model_cfg: Qwen2Config | None = None,
                     total_steps: int | None = None) -> TrainStep:
  """The jitted step for `cfg` on `mesh` and its abstract (sharded) state and batch.

  `model_cfg`: the model's architecture (default: `cfg.model.preset` with the run's numerics);
  `total_steps`: the schedule's length when `train.decay_steps` is 0 (default 1000).
  """
  check_batch_fits(cfg, mesh)
  model_cfg = model_cfg or model_config(cfg)
  rules = LogicalRules(mesh)
  graphdef, abstract = nnx.split(abstract_model(model_cfg, rules))
  param_sharding = nnx.to_pure_dict(state_shardings(abstract, rules))
  abstract_params = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      nnx.to_pure_dict(abstract), param_sharding)
  optimizer, schedule = make_optimizer(cfg.train, total_steps or DEFAULT_TOTAL_STEPS)
  replicated = NamedSharding(mesh, P())
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  opt_sharding = optax.tree_map_params(optimizer, lambda _, s: s, abstract_opt, param_sharding,
                                       transform_non_params=lambda _: replicated)
  state_sharding = {"params": param_sharding, "opt_state": opt_sharding, "step": replicated,
                    "rng": replicated}
  abstract_state = {
      "params": abstract_params,
      "opt_state": jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                abstract_opt, opt_sharding),
      "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
      "rng": jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated)}
  shape = (cfg.train.global_batch, cfg.data.seq_len)
  batch_sharding = rules.sharding(("batch", "seq"), shape)
  abstract_batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=batch_sharding)
                    for k in ROW_FIELDS}
  accum = cfg.train.grad_accum
  micro_sharding = NamedSharding(mesh, P(None, *batch_sharding.spec))

  def loss_fn(params, batch):
    return token_loss(nnx.merge(graphdef, params), batch)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state, batch):
    params = state["params"]
    batch = {k: batch[k] for k in ROW_FIELDS}
    if accum == 1:
      (loss_sum, count), grads = grad_fn(params, batch)
      grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
    else:
      def split(x):  # [G, L] -> [A, G/A, L]; micro-batch a = rows m*A + a (no data movement)
        x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(x, micro_sharding)

      def body(carry, micro):
        g_acc, s_acc, n_acc = carry
        (s, n), g = grad_fn(params, micro)
        g_acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_acc, g)
        return (g_acc, s_acc + s, n_acc + n), None

      zeros = jax.tree.map(lambda p, sh: jax.lax.with_sharding_constraint(
          jnp.zeros(p.shape, jnp.float32), sh), params, param_sharding)
      (grads, loss_sum, count), _ = jax.lax.scan(
          body, (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)),
          jax.tree.map(split, batch))
    denom = jnp.maximum(count, 1).astype(jnp.float32)
    grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, params)
    loss = loss_sum / denom
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state["opt_state"], params)
    new_state = {"params": optax.apply_updates(params, updates), "opt_state": opt_state,
                 "step": state["step"] + 1, "rng": state["rng"]}
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state["step"]),
               "target_tokens": count}
    return new_state, metrics

  step_fn = jax.jit(step, in_shardings=(state_sharding, batch_sharding),
                    out_shardings=(state_sharding, replicated), donate_argnums=(0,))

  def evaluate(params, batch):
    return loss_fn(params, {k: batch[k] for k in ROW_FIELDS})

  eval_fn = jax.jit(evaluate, in_shardings=(param_sharding, batch_sharding),
                    out_shardings=(replicated, replicated))
  return TrainStep(step_fn, eval_fn, abstract_state, abstract_batch, state_sharding,
                   batch_sharding, graphdef, optimizer, schedule, model_cfg, rules)
