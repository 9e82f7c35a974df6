"""Sharded SFT trainer: config -> mesh -> jitted step (optax, grad accumulation) -> Orbax.

  loss.py         the one loss function (sum of target-token losses, target count)
  optim.py        AdamW + warmup/cosine + clipping, weight-decay mask
  step.py         `build_train_step(cfg, mesh)`: jitted step + abstract state/batch
  checkpoints.py  Orbax CheckpointManager of the whole train state and the data position
  metrics.py      FLOP formula, device peak, metrics.jsonl and TensorBoard
  distributed.py  `jax.distributed` start-up for pods and CPU multi-process runs
  loop.py         `train(cfg, out_dir)`: what `z1 train` runs
"""
