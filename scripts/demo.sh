#!/usr/bin/env bash
# The main job: start the embedded Triton server on a checkpoint and synthesise speech through the ensemble.
#
#   bash scripts/demo.sh                       # small RANDOM checkpoint (noise, not speech): no download needed
#   LLAMA=checkpoints/fish-speech-1.5 DECODER=checkpoints/fish-speech-1.5/firefly-gan-vq-fsq-8x1024-21hz-generator.pth \
#       TEXT="Hello from Triton." bash scripts/demo.sh
#   KEEP_SERVING=1 bash scripts/demo.sh        # keep the server running afterwards (Ctrl-C stops it)
#
# Writes demo.wav (44.1 kHz) and prints time to first audio and the real-time factor.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

HTTP_PORT="${HTTP_PORT:-8000}"
GRPC_PORT="${GRPC_PORT:-8001}"
METRICS_PORT="${METRICS_PORT:-8002}"
TEXT="${TEXT:-Hello! This is Fish Speech, served by the Triton Inference Server.}"
OUTPUT="${OUTPUT:-demo.wav}"
if [ -n "${LLAMA:-}" ]; then
    CHECKPOINT_ARGS=(--llama-checkpoint-path "$LLAMA" --decoder-checkpoint-path "${DECODER:?set DECODER too}")
    REPO="${REPO:-build/model_repository}"
else
    CHECKPOINT_ARGS=(--demo)
    REPO="${REPO:-build/demo_repository}"
    # Random weights rarely say <|im_end|>: bound the noise to ~5 s unless told otherwise.
    MAX_NEW_TOKENS="${MAX_NEW_TOKENS:-100}"
fi
TTS_ARGS=()
if [ -n "${MAX_NEW_TOKENS:-}" ]; then TTS_ARGS+=(--max-new-tokens "$MAX_NEW_TOKENS"); fi

LOG="$(mktemp -t fish-speech-serve.XXXXXX.log)"
python -m fish_speech_triton.serve "${CHECKPOINT_ARGS[@]}" --model-repository "$REPO" \
    --listen "127.0.0.1:$HTTP_PORT" --grpc-port "$GRPC_PORT" --metrics-port "$METRICS_PORT" >"$LOG" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT

ready() {  # Triton's readiness endpoint answers 200 (python: no curl needed on a fresh machine)
    python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
        "http://127.0.0.1:$HTTP_PORT/v2/health/ready" 2>/dev/null
}

echo "[demo] starting the server (log: $LOG)"
for _ in $(seq 1 600); do
    if ready; then break; fi
    if ! kill -0 $SERVER 2>/dev/null; then echo "[demo] the server exited:"; tail -30 "$LOG"; exit 1; fi
    sleep 1
done
ready || { echo "[demo] server not ready"; tail -30 "$LOG"; exit 1; }
echo "[demo] server ready: HTTP 127.0.0.1:$HTTP_PORT, gRPC 127.0.0.1:$GRPC_PORT"

python -m client.tts --url "127.0.0.1:$GRPC_PORT" --text "$TEXT" --output "$OUTPUT" --streaming "${TTS_ARGS[@]}"

if [ -n "${KEEP_SERVING:-}" ]; then
    echo "[demo] still serving; Ctrl-C stops the server"
    wait $SERVER
fi
