"""The gateway's pieces that need no server: the wav header and PCM rule, body schemas and their messages,
its options and its readiness check."""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import wave

import numpy as np
import pytest
import soundfile as sf

from fish_speech_triton.audio import decode_audio
from fish_speech_triton.errors import InputError
from fish_speech_triton.gateway.app import _first, _pcm_stream
from fish_speech_triton.gateway.asgi import AudioStream
from fish_speech_triton.gateway.encoding import encode_audio, pcm16, wav_header
from fish_speech_triton.gateway.options import add_gateway_arguments, gateway_settings
from fish_speech_triton.gateway.schemas import SpeechRequest, TTSRequest, parse
from fish_speech_triton.gateway.synthesis import STAGE_MODELS, Synthesizer
from fish_speech_triton.gateway.triton import TritonBackend


def python_wav(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(44100)
        writer.writeframes(samples.tobytes())
    return buffer.getvalue()


def test_the_streaming_header_is_what_pythons_wave_writes_for_no_samples():
    assert wav_header() == python_wav(np.zeros(0, "<i2"))
    assert len(wav_header()) == 44


def test_a_complete_wav_is_what_pythons_wave_writes():
    audio = np.linspace(-1.2, 1.2, 1001, dtype=np.float32)
    assert encode_audio(audio, "wav") == python_wav(pcm16(audio))


def test_pcm_is_sample_times_32768_clipped():
    audio = np.array([-1.5, -1.0, -0.5, 0.0, 0.25, 1.0, 1.5], np.float32)
    np.testing.assert_array_equal(pcm16(audio), [-32768, -32768, -16384, 0, 8192, 32767, 32767])


def test_decoding_what_was_encoded_and_refusing_what_is_not_audio():
    audio = np.sin(np.linspace(0, 100, 4410, dtype=np.float32)) * 0.5
    decoded, rate = decode_audio(encode_audio(audio, "flac"))
    assert rate == 44100
    np.testing.assert_array_equal(pcm16(decoded), pcm16(audio))
    with pytest.raises(InputError, match="upload is not an audio file"):
        decode_audio(b"RIFF nonsense", "upload")


def test_defaults_are_the_originals():
    request = parse(TTSRequest, {"text": "hi"})
    assert (request.chunk_length, request.format, request.max_new_tokens) == (200, "wav", 1024)
    assert (request.top_p, request.repetition_penalty, request.temperature) == (0.7, 1.2, 0.7)
    assert (request.streaming, request.normalize, request.use_memory_cache) == (False, True, "off")
    assert request.references == [] and request.reference_id is None and request.seed is None
    assert parse(SpeechRequest, {"input": "hi"}).response_format == "mp3"


def test_json_bytes_are_base64_and_every_problem_is_named():
    request = parse(TTSRequest, {"text": "hi", "references": [{"audio": "aGVsbG8=", "text": "t"}]})
    assert request.references[0].audio == b"hello"
    with pytest.raises(InputError) as error:
        parse(TTSRequest, {"chunk_length": 50, "top_p": 2, "references": [{"audio": "@@", "text": "t"}]})
    message = str(error.value)
    for part in (
        "text: Field required",
        "chunk_length:",
        "top_p:",
        "references.0.audio: Value error, expected base64",
    ):
        assert part in message


@pytest.mark.parametrize(
    ("argv", "origins"),
    [
        ([], ("*",)),
        (
            ["--cors-origins", "https://a.example, https://b.example"],
            ("https://a.example", "https://b.example"),
        ),
        (["--cors-origins", ""], ()),
    ],
    ids=["any-by-default", "a-list", "none"],
)
def test_cors_origins_are_a_comma_separated_list(argv, origins):
    parser = argparse.ArgumentParser()
    add_gateway_arguments(parser)  # the gateway's command and `serve --api-listen` share these options
    assert gateway_settings(parser.parse_args(argv), "127.0.0.1:8001", None).cors_origins == origins


def test_readiness_names_the_first_stage_model_that_is_not_ready():
    class Triton:  # ready, but `llama_semantic` is not loaded
        async def is_server_ready(self, client_timeout):
            return True

        async def is_model_ready(self, model, client_timeout):
            return model != "llama_semantic"

    async def check() -> str | None:
        backend = TritonBackend("127.0.0.1:1")
        real, backend.client = backend.client, Triton()
        try:
            return await backend.not_ready(STAGE_MODELS)
        finally:
            await real.close()

    assert asyncio.run(check()) == "model 'llama_semantic' is not ready on the Triton server at 127.0.0.1:1"


@pytest.mark.parametrize("blocked_write", [1, 3], ids=["before-the-body", "mid-body"])
def test_a_client_leaving_during_a_blocked_write_cancels_the_lm_stream_at_once(blocked_write: int):
    """The client stops reading (its socket fills, a write blocks), then hangs up: the LM stream must be
    closed when the response ends, not whenever a garbage collection reaches the abandoned generators."""
    closed = []

    class Backend:  # stands in for Triton: closing the LM stream is what cancels the request there
        async def stream(self, model, inputs, outputs):
            try:
                while True:
                    await asyncio.sleep(0.01)
                    yield {"CODES": np.zeros((8, 1), np.int32), "CONTEXT_FRAMES": np.zeros(1, np.int32)}
            finally:
                closed.append(model)

        async def infer(self, model, inputs, outputs):
            return {"AUDIO": np.zeros(2048, np.float32)}

    async def main() -> None:
        rest = Synthesizer(Backend(), None).chunks({})
        first = await _first(rest)
        response = AudioStream(_pcm_stream(b"header", first, rest), rest, media_type="audio/wav")
        writes, never = 0, asyncio.Event()

        async def send(message) -> None:
            nonlocal writes
            writes += 1
            if writes >= blocked_write:  # the client's buffer is full: this write never completes
                await never.wait()

        async def receive():
            await asyncio.sleep(0.2)
            return {"type": "http.disconnect"}

        await response({"type": "http", "asgi": {"spec_version": "2.3"}}, receive, send)
        assert closed == ["llama_semantic"], "the LM stream is still open after the response ended"

    gc.disable()  # a collection could close the generators and hide the leak
    try:
        asyncio.run(main())
    finally:
        gc.enable()


def test_a_file_longer_than_the_gateway_decodes_is_refused_from_its_header():
    """Eleven minutes of compressed silence is a small upload but hundreds of MB of samples."""
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(8000 * 660, np.int16), 8000, format="FLAC", subtype="PCM_16")
    assert len(buffer.getvalue()) < 2**20
    with pytest.raises(
        InputError, match="references\\[0\\].audio lasts 660 s: at most 600 s of audio are decoded"
    ):
        decode_audio(buffer.getvalue(), "references[0].audio")
