#!/usr/bin/env bash
# The project's test command: lint, then the whole test suite (unit, parity, and end-to-end against a
# real tritonserver started by the fixtures). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
# The WebUI test (tests/test_gateway_webui.py) drives Debian's chromium: install it when it is missing.
if ! command -v chromium >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
        || echo "[test] could not install chromium: the WebUI test skips (and fails under CI)" >&2
fi
ruff check .
ruff format --check .
python -m pytest "$@"
