"""Rematerialisation policies for one decoder layer, by name (`Qwen2Config.remat_policy`).

The layer tags the activations worth keeping with `checkpoint_name` (`CHECKPOINT_NAMES`); a
policy says which of them the backward pass reads from memory (saved on the device, or
offloaded to host memory) instead of recomputing. Per layer of Qwen2.5-7B at 8,192 tokens in
bf16, one row: query / attn_out / attn_proj / mlp_out 59 MB each, key / value 8 MB each,
mlp_hidden 310 MB; times 28 layers. `save_dots` keeps every projection output (the [L, 2F]
gate/up pair too): about 25 GB per row at 8K, which is why the named policies exist.

Policies:
- `none` (no remat), `full` (save nothing: recompute the whole layer, least memory),
  `save_dots` (every matmul without batch dims), `save_attn_out`,
- `save_qkv` (query, key, value), `save_qkv_attn` (+ attn_out: the backward skips the QKV
  projections and the attention forward), `minimal` (every named activation),
- `offload_qkv_attn`, `offload_minimal`: the same names, offloaded to pinned host memory
  (TPU and GPU; refused on CPU),
- custom: `save:NAME,NAME`, `offload:NAME,NAME`, or both as `save:...;offload:...`.
"""

from __future__ import annotations

from z1_jax.errors import Z1Error

CHECKPOINT_NAMES = ("query", "key", "value", "attn_out", "attn_proj", "mlp_hidden", "mlp_out")

# name -> (saved names, offloaded names); `none`, `full` and `save_dots` are special.
_NAMED = {
    "save_attn_out": (("attn_out",), ()),
    "save_qkv": (("query", "key", "value"), ()),
    "save_qkv_attn": (("query", "key", "value", "attn_out"), ()),
    "minimal": (CHECKPOINT_NAMES, ()),
    "offload_qkv_attn": ((), ("query", "key", "value", "attn_out")),
    "offload_minimal": ((), CHECKPOINT_NAMES),
}
REMAT_POLICIES = ("none", "full", "save_dots", *_NAMED)
OFFLOAD_PLATFORMS = ("tpu", "gpu", "cuda")


def parse_policy(policy: str) -> tuple[tuple[str, ...], tuple[str, ...]] | str:
  """A preset name (returned as is for none/full/save_dots) or (saved, offloaded) names.
  Raises `Z1Error` naming what is wrong."""
  if policy in ("none", "full", "save_dots"):
    return policy
  if policy in _NAMED:
    return _NAMED[policy]
  saved: list[str] = []
  offloaded: list[str] = []
  parts = [p for p in policy.split(";") if p]
  for part in parts:
    kind, sep, names = part.partition(":")
    target = {"save": saved, "offload": offloaded}.get(kind)
    if not sep or target is None:
      raise Z1Error(f"remat_policy={policy!r}: expected one of {', '.join(REMAT_POLICIES)}, "
                    "or save:NAME,... / offload:NAME,... with names from "
                    f"{', '.join(CHECKPOINT_NAMES)}")
    for name in names.split(","):
      if name not in CHECKPOINT_NAMES:
        raise Z1Error(f"remat_policy={policy!r}: unknown activation {name!r}; named "
                      f"activations: {', '.join(CHECKPOINT_NAMES)}")
      target.append(name)
  if not parts or set(saved) & set(offloaded):
    raise Z1Error(f"remat_policy={policy!r}: name each activation at most once, in save: or "
                  "offload:")
  return tuple(saved), tuple(offloaded)


def remat(fn, policy: str, platform: str):
  """`fn` wrapped in `jax.checkpoint` with the named policy, for a mesh on `platform`."""
  import jax
  parsed = parse_policy(policy)
  if parsed == "none":
    return fn
  cp = jax.checkpoint_policies
  if parsed == "full":
    return jax.checkpoint(fn, policy=cp.nothing_saveable)
  if parsed == "save_dots":
    return jax.checkpoint(fn, policy=cp.dots_with_no_batch_dims_saveable)
  saved, offloaded = parsed
  if not offloaded:
    return jax.checkpoint(fn, policy=cp.save_only_these_names(*saved))
  if platform not in OFFLOAD_PLATFORMS:
    raise Z1Error(f"remat_policy={policy!r} offloads activations to host memory, which "
                  f"{platform} devices do not have; use a save_ policy (or full) here")
  return jax.checkpoint(fn, policy=cp.save_and_offload_only_these_names(
      names_which_can_be_saved=list(saved), names_which_can_be_offloaded=list(offloaded),
      offload_src="device", offload_dst="pinned_host"))
