#!/usr/bin/env bash
# Quickstart 2: set up, then run the whole test suite (CPU; 8 virtual devices per process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n "${Z1_TEST_WORKERS:-2}" -q tests "$@"
