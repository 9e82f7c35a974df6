"""`z1 plan`: the trainer's real step compiled ahead of time for a TPU slice (splash attention
included) and for N CPU devices; out-of-memory as an answer; bad invocations refused."""

import dataclasses
import json
import warnings
from pathlib import Path

import pytest

from z1_jax.cli import main
from z1_jax.config import load_config
from z1_jax.train.plan import plan_train, required_from_message, suggest_meshes

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/tiny.toml")
RECIPE = str(ROOT / "configs/z1-qwen2.5-coder-7b.toml")


def test_tiny_run_compiles_for_a_tpu_slice_with_splash():
  """The TPU code path on every CI run: libtpu compiles the tiny step (splash attention under
  shard_map, chunked loss, AdamW) for a v5p-8 topology on this CPU host."""
  cfg = load_config(TINY, ["model.attention_impl=splash", "model.remat_policy=save_qkv_attn"])
  plan = plan_train(cfg, "v5p-8", {"data": 2, "fsdp": 2})
  assert plan.fits and plan.device_kind == "TPU v5" and plan.chips == 4
  assert plan.mesh == {"data": 2, "fsdp": 2, "tensor": 1}
  assert 0 < plan.arguments_bytes < plan.total_bytes < plan.hbm_bytes
  assert plan.total_bytes == (plan.arguments_bytes + plan.outputs_bytes - plan.alias_bytes +
                              plan.temp_bytes)
  assert plan.attention_impl == "splash" and plan.rows_per_chip == 1
  assert {"data": 1, "fsdp": 4, "tensor": 1} in plan.other_meshes
  assert plan.flops_per_step > 6 * 4 * 128 * 1e6  # 6 N per token, N ~ 10M (vocab head)
  # splash's Pallas kernels are counted (by formula), and save_qkv_attn recomputes the MLP
  assert plan.uncounted_kernels == () and 1.05 < plan.hardware_ratio < 1.5


def test_7b_on_a_small_slice_does_not_fit_and_says_how_much_it_needs():
  cfg = load_config(RECIPE, ["train.grad_accum=32"])
  plan = plan_train(cfg, "v5e-4")
  assert not plan.fits and "RESOURCE_EXHAUSTED" in plan.error
  assert plan.required_bytes > plan.hbm_bytes > 15 * 2**30
  assert plan.mesh == {"data": 1, "fsdp": 4, "tensor": 1}
  # "needs" = arguments (fp32 params + Adam moments of 7.6B over 4 chips, ~21 GiB) + the
  # compiler's temporaries, and the summary says so
  assert 20 * 2**30 < plan.arguments_bytes < 23 * 2**30
  assert plan.required_bytes == plan.arguments_bytes + plan.required_temp_bytes
  assert "needs" in plan.summary() and "arguments" in plan.summary().split("needs")[1]


def test_out_of_memory_messages_parse():
  assert required_from_message(
      "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
      "temporaries (300.00G) exceeds available HBM (95.74G).") == (300 * 2**30,
                                                                  int(95.74 * 2**30))
  assert required_from_message("Used 20.5G of 15.75G hbm. Exceeded hbm capacity by 4.75G.") == (
      int(20.5 * 2**30), int(15.75 * 2**30))
  assert required_from_message("RESOURCE_EXHAUSTED: something else") == (None, None)


def test_suggested_meshes_divide_the_7b_model():
  from z1_jax.model.config import get_preset
  meshes = suggest_meshes(get_preset("qwen2.5-coder-7b"), micro_batch=16, chips=32, limit=10)
  # 16 rows cannot split 32 ways: the least tensor that works is 2, with the most fsdp
  assert meshes[0] == {"data": 1, "fsdp": 16, "tensor": 2}
  assert all(m["tensor"] in (2, 4) for m in meshes)  # 28 heads, 4 KV heads: never 7 or 8
  assert suggest_meshes(get_preset("qwen2.5-coder-7b"), 32, 32)[0] == {"data": 1, "fsdp": 32,
                                                                       "tensor": 1}


def test_cli_plans_on_cpu_devices_as_json(capsys):
  assert main(["plan", "--config", TINY, "--devices", "4", "--json",
               "train.max_steps=1"]) == 0
  plan = json.loads(capsys.readouterr().out)
  assert plan["fits"] and plan["chips"] == 4 and plan["target"] == "4 cpu devices"
  assert plan["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}  # tiny.toml's [mesh]: data=-1
  assert plan["temp_bytes"] > 0 and plan["ideal_step_s"] > 0


@pytest.mark.parametrize("argv, culprit", [
    (["--accelerator", "v5p-7"], "unknown accelerator 'v5p-7'"),
    (["--accelerator", "v5p-8", "--devices", "4"], "not allowed with argument"),
    (["--devices", "0"], "--devices"),
    (["--devices", "4", "--mesh", "data=3"], "mesh data=3,fsdp=1,tensor=1 has 3 devices; the "
     "target has 4; meshes that divide: data=1,fsdp=4,tensor=1"),
    (["--devices", "8", "--mesh", "tensor=8"],
     "parameter layers.0.attn.o_proj of shape (4, 16, 64): dimension 0 ('q_heads', size 4)"),
    (["--devices", "4", "model.remat_policy=sometimes"], "model.remat_policy"),
])
def test_bad_invocations_exit_2_naming_the_culprit(argv, culprit, capsys):
  try:
    rc = main(["plan", "--config", TINY, *argv])
  except SystemExit as e:  # argparse refuses before any work
    rc = e.code
  err = capsys.readouterr().err
  assert rc == 2 and culprit in err and "Traceback" not in err


SYNTHETIC_HLO = """\
HloModule step

%all-reduce-scatter.1 (input.1: f32[64,16]) -> f32[16,16] {
  %input.1 = f32[64,16]{1,0} parameter(0)
  %all-reduce.9 = f32[64,16]{1,0} all-reduce(%input.1), replica_groups={{0,1,2,3}}, to_apply=%add
}

%cond (p: (s32[], f32[8])) -> pred[] {
  %constant.3 = s32[]{:T(128)} constant(28)
  %p = (s32[], f32[8]) parameter(0)
  %gte = s32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[] compare(%gte, %constant.3), direction=LT
}

%body (p.1: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p.1 = (s32[], f32[8]) parameter(0)
  %i.1 = s32[] get-tuple-element(%p.1), index=0
  %one = s32[] constant(1)
  %next = s32[] add(%i.1, %one)
  %ag = bf16[1024,512]{1,0} all-gather(%x), channel_id=1, replica_groups=mesh['axis_0'=1,'axis_1'=4] {'axis_1'}, dimensions={0}
  %rs = f32[16,16]{1,0} fusion(%y), kind=kCustom, calls=%all-reduce-scatter.1, backend_config={"debug":"
}}, continued"}
  ROOT %t.1 = (s32[], f32[8]) tuple(%next, %y)
}

%wdg_cond (q: (bf16[4,8], u32[], u32[])) -> pred[] {
  %constant.7 = u32[]{:T(128)} constant(16)
  %q = (bf16[4,8], u32[], u32[]) parameter(0)
  %i = u32[]{:T(128)} get-tuple-element(%q), index=1
  ROOT %c = pred[]{:T(512)} compare(%i, %constant.7), direction=LT
}

%wdg_body (q.1: (bf16[4,8], u32[], u32[])) -> (bf16[4,8], u32[], u32[]) {
  %q.1 = (bf16[4,8], u32[], u32[]) parameter(0)
  %i.2 = u32[]{:T(128)} get-tuple-element(%q.1), index=1
  %two = u32[]{:T(128)} get-tuple-element(%q.1), index=2
  %cp = (bf16[4,8]{1,0:T(8,128)(2,1)}, bf16[4,8]{1,0:T(8,128)(2,1)}, u32[]{:S(2)}, u32[]{:S(2)}) collective-permute-start(%g), channel_id=3, source_target_pairs={{0,1},{1,0}}
  %cpd = bf16[4,8]{1,0:T(8,128)(2,1)} collective-permute-done(%cp)
  %i.3 = u32[]{:T(128)} add(%i.2, %two)
  ROOT %t.2 = (bf16[4,8], u32[], u32[]) tuple(%cpd, %i.3, /*index=2*/%two)
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %zero = s32[] constant(0)
  %t = (s32[], f32[8]) tuple(%zero, %a)
  %w = (s32[], f32[8]) while(%t), condition=%cond, body=%body
  %zero.u = u32[]{:T(128)} constant(0)
  %start = u32[]{:T(128)} copy(%zero.u)
  %step = u32[]{:T(128)} constant(2)
  %t2 = (bf16[4,8], u32[], u32[]) tuple(%b, %start, %step)
  %w2 = (bf16[4,8], u32[], u32[]) while(%t2), condition=%wdg_cond, body=%wdg_body
  %ar = f32[256]{0} all-reduce(%z), replica_groups=[2,4]<=[8], to_apply=%add
}
"""


def test_collectives_count_loop_trips_and_tpu_fused_reduce_scatter():
  """The HLO reader on the shapes TPU's compiler prints: a while loop without XLA's trip-count
  annotation (`i < 28` from 0 by 1), a reduce-scatter fused as `all-reduce-scatter`, an
  instruction continued over lines, the three replica-group notations, and a collective
  matmul's loop: an unsigned counter from copy(0) by a loop-invariant 2 below 16, so 8 trips
  (not 16), with an async permute whose tuple ends in context scalars."""
  from z1_jax.collectives import collective_bytes
  stats = collective_bytes(SYNTHETIC_HLO, devices=8)
  ag, rs, ar = stats["all-gather"], stats["reduce-scatter"], stats["all-reduce"]
  assert (ag.count, ag.bytes) == (28, 28 * 1024 * 512 * 2)
  assert ag.wire_bytes == pytest.approx(ag.bytes * 3 / 4)
  assert (rs.count, rs.bytes) == (28, 28 * 64 * 16 * 4)  # the input, not the shard
  assert rs.wire_bytes == pytest.approx(rs.bytes * 3 / 4)
  assert (ar.count, ar.bytes) == (1, 256 * 4)  # the all-reduce inside the fusion is not counted
  assert ar.wire_bytes == pytest.approx(2 * 1024 * 3 / 4)
  cp = stats["collective-permute"]
  assert (cp.count, cp.bytes, cp.wire_bytes) == (8, 8 * 4 * 8 * 2, 8 * 4 * 8 * 2)


@pytest.mark.parametrize("start, step, bound, direction, trips", [
    (0, 2, 16, "LT", 8), (0, 2, 15, "LT", 8), (1, 3, 10, "LE", 4), (16, -2, 0, "GT", 8),
    (5, 1, 5, "LT", 0)])
def test_trip_count_reads_start_step_and_bound(start, step, bound, direction, trips):
  from z1_jax import hlo
  text = SYNTHETIC_HLO.replace("constant(16)", f"constant({bound})").replace(
      "direction=LT\n}\n\n%wdg_body", f"direction={direction}\n}}\n\n%wdg_body").replace(
      "%zero.u = u32[]{:T(128)} constant(0)", f"%zero.u = s32[] constant({start})").replace(
      "%step = u32[]{:T(128)} constant(2)", f"%step = s32[] constant({step})")
  module = hlo.parse(text)
  entry = module.computations[module.entry]
  assert hlo.trip_count(module, entry, entry.defs["w2"]) == trips
  assert hlo.trip_count(module, entry, entry.defs["w"]) == 28


def test_a_loop_whose_count_depends_on_data_needs_unknown_trips():
  from z1_jax.collectives import collective_bytes
  data_bound = SYNTHETIC_HLO.replace("%constant.7 = u32[]{:T(128)} constant(16)",
                                     "%constant.7 = u32[]{:T(128)} get-tuple-element(%q), index=0")
  with pytest.raises(ValueError, match="trip count of the while loop %w2"):
    collective_bytes(data_bound, devices=8)
  assert collective_bytes(data_bound, 8, unknown_trips=1)["collective-permute"].count == 1


def test_collective_matmul_on_a_tpu_slice_moves_one_weight():
  """The TPU compiler's own collective matmul (v5p-64, 32 chips, an FSDP-sharded weight): its
  loop counts 0, 2, 4, ... below 16, so 8 trips of 4 permutes move the weight once, and the
  matmul FLOPs read per trip are the device's share; XLA's cost_analysis counts one trip."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P
  from z1_jax import hlo
  from z1_jax.collectives import collective_bytes
  from z1_jax.topology import compile_only, topology_mesh
  mesh = topology_mesh("v5p-64", {"fsdp": 32})
  rows, embed, ffn = 65536, 1536, 8960
  spec = lambda *s: jax.ShapeDtypeStruct(s, jnp.bfloat16, sharding=NamedSharding(mesh, P("fsdp")))
  step = jax.jit(lambda x, w: x @ w, out_shardings=NamedSharding(mesh, P("fsdp")))
  lower = lambda: step.trace(spec(rows, embed), spec(embed, ffn)).lower()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    lower().compile()  # a plain compile stores it in the suite's persistent cache (conftest)
  jax.clear_caches()  # as a new process would find it
  with warnings.catch_warnings():  # which cannot load an executable for compile-only devices:
    warnings.simplefilter("error")  # JAX would warn and compile again; compile_only skips it
    compiled = compile_only(lower())
  text = compiled.as_text()
  assert "windowed_dot_general" in text
  module = hlo.parse(text)
  loops = [(c, i) for c, i, _ in hlo.walk(module) if i.opcode == "while"]
  assert [hlo.trip_count(module, c, i) for c, i in loops] == [8]
  permutes = collective_bytes(text, devices=32)["collective-permute"]
  weight_shard = embed * ffn * 2 / 32
  assert permutes.count == 8 * 4 + 1 and permutes.bytes == 33 * weight_shard
  flops = hlo.arithmetic(text).matmul_flops
  assert flops == 2 * rows * embed * ffn / 32
  assert compiled.cost_analysis()["flops"] < flops / 7  # one trip of eight


def test_fsdp_step_on_cpu_devices_reports_its_collectives(capsys):
  """A real compiled step: fsdp=8 on 8 host devices all-gathers the weights and reduces the
  gradients; without an ICI figure (CPU) there is no communication time, and the bound is the
  compiled work alone."""
  assert main(["plan", "--config", TINY, "--devices", "8", "--mesh", "data=1,fsdp=8",
               "--json", "train.global_batch=8"]) == 0
  plan = json.loads(capsys.readouterr().out)
  c = plan["collectives"]
  assert c["all-gather"]["count"] > 0 and c["all-gather"]["bytes"] > 0
  assert c["all-reduce"]["bytes"] + c["reduce-scatter"]["bytes"] > 0
  assert plan["comm_s"] is None and plan["step_lower_bound_s"] == plan["compute_s"] > 0
  assert plan["mfu_upper_bound"] == pytest.approx(1 / plan["hardware_ratio"])


def test_roofline_is_the_slower_of_compiled_work_and_ici():
  from z1_jax.train.plan import Plan
  base = dict(target="v5e-16", device_kind="TPU v5 lite", chips=16, mesh={}, fits=True,
              hbm_bytes=1, arguments_bytes=1, outputs_bytes=1, alias_bytes=0, temp_bytes=1,
              total_bytes=3, peak_bytes=None, required_bytes=None, required_temp_bytes=None,
              compile_s=0, compile_cpu_s=0, seq_len=8, global_batch=1, grad_accum=1,
              rows_per_chip=1, attention_impl="xla", remat_policy="full")
  wire = {"all-gather": {"count": 1, "bytes": 8e11, "wire_bytes": 8e11}}
  plan = Plan(**base, flops_per_step=4e15, peak_flops=2e15, collectives=wire,
              ici_bytes_per_s=4e11, hardware_flops_per_step=5e15)  # model 2 s, work 2.5 s, ICI 2 s
  assert plan.comm_s == pytest.approx(2.0) and plan.compute_s == pytest.approx(2.5)
  assert plan.step_lower_bound_s == pytest.approx(2.5) and plan.hardware_ratio == 1.25
  assert plan.mfu_upper_bound == pytest.approx(0.8)  # remat's recompute caps MFU, not ICI
  assert "MFU <= 80%" in plan.summary() and "hardware / model = 1.25" in plan.summary()
  slow = dataclasses.replace(plan, ici_bytes_per_s=1e11)  # ICI 8 s
  assert slow.step_lower_bound_s == pytest.approx(8.0)
  assert slow.mfu_upper_bound == pytest.approx(0.25)
  assert "MFU <= 25%" in slow.summary()


@pytest.mark.parametrize("remat, low, high", [("none", 0.99, 1.01), ("full", 1.2, 1.25)])
def test_hardware_flops_count_what_the_compiled_step_recomputes(remat, low, high):
  """The compiled program's FLOPs (dots per loop trip) against the model formula: without remat
  they agree; full remat recomputes each layer's forward (hardware / model ~1.22 here: the
  layers' matmuls x 4/3, the LM head's x 1); split into 2 micro-batches (a scan of 2 trips) the
  step computes the same."""
  over = ['model.preset="z1-demo"', f'model.remat_policy="{remat}"', "train.global_batch=8"]
  one = plan_train(load_config(TINY, over), devices=4)
  assert low < one.hardware_ratio < high
  assert one.mfu_upper_bound == pytest.approx(1 / one.hardware_ratio)
  two = plan_train(load_config(TINY, over + ["train.grad_accum=2"]), devices=4)
  assert two.hardware_flops_per_step == pytest.approx(one.hardware_flops_per_step, rel=1e-3)
