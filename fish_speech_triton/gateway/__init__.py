"""The original Fish-Speech HTTP API (`tools.api_server`), its WebUI and OpenAI's `/v1/audio/speech`, served
in front of Triton: an ASGI app that turns each HTTP request into gRPC streams to the stage models
(`vqgan_encoder`, `llama_semantic`, `vqgan_decoder`; a client that hangs up cancels its LM stream), so existing Fish-Speech and OpenAI-style TTS clients work unchanged.

    python -m fish_speech_triton.gateway --listen 127.0.0.1:8080 --triton-url 127.0.0.1:8001
"""
