#!/usr/bin/env bash
# Quickstart 1: set up, then run the main job on built-in defaults (CPU, no downloads).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/z1 demo "$@"
