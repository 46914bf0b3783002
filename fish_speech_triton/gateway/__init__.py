"""The original Fish-Speech HTTP API (`tools.api_server`), its WebUI and OpenAI's `/v1/audio/speech`, served
in front of Triton: an ASGI app that turns each HTTP request into gRPC streams to the `ensemble` and the
codec models, so existing Fish-Speech and OpenAI-style TTS clients work unchanged.

    python -m fish_speech_triton.gateway --listen 127.0.0.1:8080 --triton-url 127.0.0.1:8001
"""
