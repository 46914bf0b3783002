# Sourced by the project's scripts: makes sure ./.venv exists and holds what pyproject.toml asks for.
# Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV" >&2
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.fish-speech-triton.stamp"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "[setup] installing dependencies into $VENV (first run takes a few minutes)" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
    # Pin torch first: the CPU build is enough here, and a bare 'torch' could pull a multi-GB CUDA build.
    "$VENV/bin/python" -m pip install --quiet "torch==${TORCH_VERSION:-2.13.0}" >&2
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[server,dev]" >&2
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export VIRTUAL_ENV="$VENV"
