#!/usr/bin/env bash
# Quickstart 2: set up, then run the whole test suite (CPU; 8 virtual devices per process).
# Ends by stating how long set-up and tests took (target: the tests under 15 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
bash scripts/setup.sh
setup=$((SECONDS - start))
rc=0
.venv/bin/python -m pytest -n "${Z1_TEST_WORKERS:-2}" -q tests "$@" || rc=$?
echo "scripts/test.sh: set-up ${setup} s, tests $((SECONDS - start - setup)) s, exit ${rc}"
exit "$rc"
