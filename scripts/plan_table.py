"""The README's "TPU memory plans" table: `z1 plan` for the Z1-7B recipe on Cloud TPU slices.

Each row is one `z1 plan --config configs/z1-qwen2.5-coder-7b.toml --accelerator SLICE --json
data.seq_len=S train.grad_accum=G` in its own process (one compile at a time: ~30 s of CPU and
~2.3 GiB each), with grad_accum = 128 / chips so that each chip holds one row per micro-batch.
Results are appended to a JSONL file as they come (a rerun skips rows already there), then
printed as a Markdown table.

  python scripts/plan_table.py [--out plans.jsonl] [--only v5p-8,v6e-8] [--seq 8192,16384]
                               [--speed]

`--speed` prints the predicted-speed table instead: collective bytes per chip per step, the
model and compiled (hardware) FLOPs, and the step-time bound (see `z1_jax/train/plan.py`'s
docstring for what is counted and assumed).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/z1-qwen2.5-coder-7b.toml"
SLICES = ["v5p-8", "v5p-16", "v5p-32", "v5p-64", "v4-32", "v4-64", "v6e-8", "v6e-16", "v5e-8",
          "v5e-16", "v5e-32"]
GLOBAL_BATCH = 128


def chips(name: str) -> int:
  sys.path.insert(0, str(ROOT))
  from z1_jax.topology import accelerator
  return accelerator(name).chips


def run(slice_name: str, seq: int, extra: list[str]) -> dict:
  accum = GLOBAL_BATCH // chips(slice_name)
  cmd = [sys.executable, "-m", "z1_jax", "plan", "--config", CONFIG, "--accelerator",
         slice_name, "--json", f"data.seq_len={seq}", f"train.grad_accum={accum}", *extra]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  if res.returncode:
    raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-2000:]}")
  plan = json.loads(res.stdout)
  plan["command"] = "z1 " + " ".join(cmd[3:cmd.index("--json")] + cmd[cmd.index("--json") + 1:])
  return plan


def table(rows: list[dict]) -> str:
  gib = lambda b: "-" if b is None else f"{b / 2**30:.1f}"
  out = ["| slice | chips | seq | mesh (data,fsdp,tensor) | grad_accum | remat | args | temps | "
         "total | compiler peak | HBM | fits | compile s (CPU s) |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  order = lambda p: (p["seq_len"], SLICES.index(p["target"]) if p["target"] in SLICES else 99,
                     p["remat_policy"] != "full")
  for p in sorted(rows, key=order):
    mesh = ",".join(str(v) for v in p["mesh"].values())
    total = gib(p["total_bytes"]) if p["fits"] else f"needs {gib(p['required_bytes'])}"
    out.append(f"| {p['target']} | {p['chips']} | {p['seq_len']} | {mesh} | {p['grad_accum']} "
               f"| {p['remat_policy']} "
               f"| {gib(p['arguments_bytes'])} | {gib(p['temp_bytes'])} | {total} | "
               f"{gib(p['peak_bytes'])} | {gib(p['hbm_bytes'])} | "
               f"{'yes' if p['fits'] else '**no**'} | {p['compile_s']:.0f} "
               f"({p['compile_cpu_s']:.0f}) |")
  return "\n".join(out)


def speed_table(rows: list[dict]) -> str:
  gib = lambda b: f"{b / 2**30:.1f}"
  out = ["| slice | chips | seq | all-gather | reduce-scatter | all-reduce | permute | wire GiB | "
         "ICI s | model s | hardware / model | compiled work s | step >= s | MFU <= |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  rows = [p for p in rows if p.get("collectives") and not p.get("extra")]
  for p in sorted(rows, key=lambda p: (p["seq_len"], SLICES.index(p["target"]))):
    c = p["collectives"]
    wire = sum(v["wire_bytes"] for v in c.values())
    out.append(f"| {p['target']} | {p['chips']} | {p['seq_len']} | "
               + " | ".join(f"{gib(c[k]['bytes'])}" for k in
                            ("all-gather", "reduce-scatter", "all-reduce", "collective-permute"))
               + f" | {gib(wire)} | {p['comm_s']:.2f} | {p['ideal_step_s']:.2f} | "
               f"{p['hardware_ratio']:.2f} | {p['compute_s']:.2f} | "
               f"{p['step_lower_bound_s']:.2f} | {p['mfu_upper_bound']:.0%} |")
  return "\n".join(out)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", default="plans.jsonl", help="results, one JSON per line")
  ap.add_argument("--only", default=",".join(SLICES), help="slices (default: all in SLICES)")
  ap.add_argument("--seq", default="8192,16384", help="sequence lengths")
  ap.add_argument("--table-only", action="store_true", help="print the table of --out")
  ap.add_argument("--speed", action="store_true", help="print the predicted-speed table")
  ap.add_argument("extra", nargs="*", help="more config overrides for every row")
  args = ap.parse_args()
  show = speed_table if args.speed else table
  if args.table_only:
    print(show([json.loads(line) for line in Path(args.out).read_text().splitlines()]))
    return
  out = Path(args.out)
  done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
  have = {(p["target"], p["seq_len"], tuple(p.get("extra", []))) for p in done}
  for seq in (int(s) for s in args.seq.split(",")):
    for name in args.only.split(","):
      if (name, seq, tuple(args.extra)) in have:
        continue
      plan = run(name, seq, args.extra)
      plan["extra"] = args.extra
      with out.open("a") as f:
        f.write(json.dumps(plan) + "\n")
      done.append(plan)
      print(f"{name} seq {seq}: fits={plan['fits']} total={plan['total_bytes']} "
            f"compile {plan['compile_s']:.0f}s", file=sys.stderr, flush=True)
  print(show(done))


if __name__ == "__main__":
  main()
