#!/usr/bin/env bash
# The project's test command: lint, then the whole test suite (unit, parity, and end-to-end against a
# real tritonserver started by the fixtures). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
ruff check .
ruff format --check .
python -m pytest "$@"
