"""The HTTP gateway in front of a real tritonserver: the original Fish-Speech API (msgpack and JSON, references,
stored voices, every format), its streaming byte layout, every error code, CORS, health, the codec endpoints,
OpenAI's /v1/audio/speech, 8 concurrent streams, and hang-ups that free their LM slot.

Expected audio comes from Triton itself (the ensemble and the stage models), never from the gateway's code.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import socket
import struct
import time

import httpx
import msgpack
import numpy as np
import pytest
import soundfile as sf
import tritonclient.grpc as grpcclient
from gateway_support import running_gateway
from triton_fixtures import KV_SLOTS, STORED_VOICE, wait_for_gauges

from client.triton_stream import ServerError, collect, infer, server_error
from fish_speech_triton.audio import synthetic_speech
from fish_speech_triton.gateway.app import MAX_DECODE_REQUEST_FRAMES
from fish_speech_triton.triton_server import free_port

TEXT = "Hello from the gateway."
SHORT = {"max_new_tokens": 16, "seed": 11}
API_KEY = "s3cret-key"
ORIGIN = "https://app.example.com"
MAX_TEXT_LENGTH = 40
SAMPLES_PER_FRAME = 2048
# How soon the requests of clients that hung up must be gone from the LM: a few decode steps, far below the
# seconds each would still decode for.
HANG_UP_DEADLINE_S = 2.0
# The spec's streaming header: 44.1 kHz, 16-bit, mono PCM, zero data length.
STREAM_HEADER = struct.pack(
    "<4sI4s4sIHHIIHH4sI", b"RIFF", 36, b"WAVE", b"fmt ", 16, 1, 1, 44100, 88200, 2, 16, b"data", 0
)


def wav_file(seconds: float, rate: int, seed: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, synthetic_speech(seconds, rate, seed=seed), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


REFERENCE = wav_file(1.0, 16000, seed=5)
SECOND_REFERENCE = wav_file(0.8, 44100, seed=6)


def read_file(data: bytes) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(io.BytesIO(data), dtype="float32")
    return audio, rate


def spec_pcm16(audio: np.ndarray) -> np.ndarray:
    """The issue's PCM rule: little-endian int16 of sample * 32768, clipped."""
    return np.clip(audio * 32768.0, -32768, 32767).astype("<i2")


def wav_pcm(data: bytes) -> np.ndarray:
    """The samples of a complete 16-bit mono 44.1 kHz wav, its header checked field by field."""
    riff, size, wave, fmt, fmt_size, pcm, channels, rate, byte_rate, align, bits, chunk, data_size = (
        struct.unpack_from("<4sI4s4sIHHIIHH4sI", data)
    )
    assert (riff, wave, fmt, chunk) == (b"RIFF", b"WAVE", b"fmt ", b"data")
    assert (fmt_size, pcm, channels, rate, byte_rate, align, bits) == (16, 1, 1, 44100, 88200, 2, 16)
    assert size == len(data) - 8 and data_size == len(data) - 44
    return np.frombuffer(data[44:], "<i2")


def post(gateway, path: str, body: dict, *, as_msgpack: bool = False, headers=None, timeout=120.0):
    if as_msgpack:
        headers = {"Content-Type": "application/msgpack", **(headers or {})}
        return httpx.post(gateway.url + path, content=msgpack.packb(body), headers=headers, timeout=timeout)
    json_text = json.dumps(body)  # ASCII with escapes, as browsers send it: a lone surrogate stays sendable
    headers = {"Content-Type": "application/json", **(headers or {})}
    return httpx.post(gateway.url + path, content=json_text, headers=headers, timeout=timeout)


def sampling_inputs(seed: int = SHORT["seed"], max_new_tokens: int = SHORT["max_new_tokens"]) -> dict:
    """The LM inputs the gateway sends for SHORT and the original's default sampling values."""
    return {
        "MAX_NEW_TOKENS": np.array([max_new_tokens], np.int32),
        "TOP_P": np.array([0.7], np.float32),
        "TEMPERATURE": np.array([0.7], np.float32),
        "REPETITION_PENALTY": np.array([1.2], np.float32),
        "SEED": np.array([seed], np.int64),
        "CHUNK_LENGTH": np.array([200], np.int32),
    }


def ensemble_pcm(triton, **inputs) -> np.ndarray:
    audio = collect(triton, "ensemble", {"TEXT": TEXT, **sampling_inputs(), **inputs}, ("AUDIO",))
    return spec_pcm16(audio.concatenated("AUDIO"))


def fish_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["statusCode"] == status and body["error"]
    return body["message"]


def openai_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    return error["message"]


@pytest.fixture(scope="module")
def gateway(triton_deployment):
    with running_gateway(triton_deployment) as running:
        yield running


@pytest.fixture(scope="module")
def keyed_gateway(triton_deployment):
    with running_gateway(triton_deployment, api_key=API_KEY, max_text_length=MAX_TEXT_LENGTH) as running:
        yield running


@pytest.fixture(scope="module")
def triton(triton_deployment):
    return grpcclient.InferenceServerClient(triton_deployment.grpc_url)


@pytest.fixture(scope="module")
def short_wav(gateway) -> bytes:
    response = post(gateway, "/v1/tts", {"text": TEXT, **SHORT})
    assert response.status_code == 200, response.text
    return response.content


# ------------------------------------------------------------------------------------------------ /v1/tts


def test_health_answers_get_and_post(gateway):
    for method in ("GET", "POST"):
        response = httpx.request(method, gateway.url + "/v1/health")
        assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_the_stored_voices_are_listed_as_later_originals_answer(gateway):
    response = httpx.get(gateway.url + "/v1/references/list")
    assert response.json() == {
        "success": True,
        "reference_ids": [STORED_VOICE],
        "message": "Found 1 reference voices",
    }


def test_complete_wav_is_the_ensembles_audio(gateway, triton, short_wav):
    response = post(gateway, "/v1/tts", {"text": TEXT, **SHORT}, as_msgpack=True)
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    assert response.headers["content-disposition"] == "attachment; filename=audio.wav"
    assert response.content == short_wav  # msgpack and JSON bodies mean the same request
    samples = wav_pcm(short_wav)
    assert samples.size == SHORT["max_new_tokens"] * SAMPLES_PER_FRAME
    np.testing.assert_array_equal(samples, ensemble_pcm(triton))


def test_stored_voice_by_reference_id_in_msgpack_and_json(gateway, triton):
    body = {"text": TEXT, **SHORT, "reference_id": STORED_VOICE}
    packed = post(gateway, "/v1/tts", body, as_msgpack=True)
    assert packed.status_code == 200, packed.text
    assert post(gateway, "/v1/tts", body).content == packed.content
    np.testing.assert_array_equal(wav_pcm(packed.content), ensemble_pcm(triton, REFERENCE_ID=STORED_VOICE))


def test_uploaded_reference_in_msgpack_and_json(gateway, triton):
    reference = {"audio": REFERENCE, "text": "A reference recording."}
    packed = post(gateway, "/v1/tts", {"text": TEXT, **SHORT, "references": [reference]}, as_msgpack=True)
    assert packed.status_code == 200, packed.text
    as_base64 = {**reference, "audio": base64.b64encode(REFERENCE).decode()}
    assert (
        post(gateway, "/v1/tts", {"text": TEXT, **SHORT, "references": [as_base64]}).content == packed.content
    )
    audio, rate = read_file(REFERENCE)
    expected = ensemble_pcm(
        triton,
        REFERENCE_AUDIO=audio,
        REFERENCE_SAMPLE_RATE=np.array([rate], np.int32),
        REFERENCE_TEXT="A reference recording.",
    )
    np.testing.assert_array_equal(wav_pcm(packed.content), expected)


def test_several_references_become_one_with_their_codes_back_to_back(gateway, triton):
    references = [
        {"audio": REFERENCE, "text": "First reference."},
        {"audio": SECOND_REFERENCE, "text": "Second reference."},
    ]
    response = post(gateway, "/v1/tts", {"text": TEXT, **SHORT, "references": references}, as_msgpack=True)
    assert response.status_code == 200, response.text
    codes = []
    for reference in references:
        audio, rate = read_file(reference["audio"])
        inputs = {"AUDIO": audio, "SAMPLE_RATE": np.array([rate], np.int32)}
        codes.append(infer(triton, "vqgan_encoder", inputs, ("CODES",))["CODES"])
    lm_inputs = {
        "TEXT": TEXT,
        **sampling_inputs(),
        "REFERENCE_CODES": np.concatenate(codes, axis=1),
        "REFERENCE_TEXT": "First reference. Second reference.",
    }
    chunks = collect(triton, "llama_semantic", lm_inputs, ("CODES", "CONTEXT_FRAMES")).chunks
    audio = np.concatenate([infer(triton, "vqgan_decoder", chunk, ("AUDIO",))["AUDIO"] for chunk in chunks])
    np.testing.assert_array_equal(wav_pcm(response.content), spec_pcm16(audio))


@pytest.mark.parametrize(
    ("audio_format", "media_type"),
    [("pcm", "application/octet-stream"), ("flac", "audio/flac"), ("mp3", "audio/mpeg")],
)
def test_other_formats_carry_the_same_audio(gateway, short_wav, audio_format, media_type):
    response = post(gateway, "/v1/tts", {"text": TEXT, **SHORT, "format": audio_format})
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert response.headers["content-disposition"] == f"attachment; filename=audio.{audio_format}"
    expected = wav_pcm(short_wav)
    if audio_format == "pcm":
        np.testing.assert_array_equal(np.frombuffer(response.content, "<i2"), expected)
        return
    audio, rate = sf.read(io.BytesIO(response.content), dtype="int16")
    assert rate == 44100 and audio.ndim == 1
    if audio_format == "flac":
        np.testing.assert_array_equal(audio, expected)
    else:  # lossy, with the encoder's padding
        assert abs(audio.size - expected.size) <= 3 * 1152


def test_streaming_is_a_44_byte_header_then_the_pcm_of_the_complete_wav(gateway):
    body = {"text": TEXT, "max_new_tokens": 24, "seed": 4}
    complete = post(gateway, "/v1/tts", body)
    with httpx.stream(
        "POST", gateway.url + "/v1/tts", json={**body, "streaming": True}, timeout=120
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "audio/wav"
        assert response.headers["content-disposition"] == "attachment; filename=audio.wav"
        assert response.headers["transfer-encoding"] == "chunked"
        data = b"".join(response.iter_raw())
    assert data[:44] == STREAM_HEADER
    assert len(data) - 44 == 2 * 24 * SAMPLES_PER_FRAME
    assert data[44:] == wav_pcm(complete.content).tobytes()


# ------------------------------------------------------------------------------------------------ errors

MISSING = object()
# Fields the schema refuses: 422, as the original's framework answers them.
SCHEMA_ERRORS = [
    ({"chunk_length": 99}, "chunk_length"),
    ({"chunk_length": 301}, "chunk_length"),
    ({"chunk_length": "200"}, "chunk_length: Input should be a valid integer"),  # strict, as the original's
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": True}, "top_p: Input should be a valid number"),
    ({"temperature": "0.5"}, "temperature: Input should be a valid number"),
    ({"temperature": 0.0}, "temperature"),
    ({"repetition_penalty": 3}, "repetition_penalty"),
    ({"max_new_tokens": -1}, "max_new_tokens"),
    ({"format": "ogg"}, "format"),
    ({"use_memory_cache": "maybe"}, "use_memory_cache"),
    ({"text": MISSING}, "text: Field required"),
    ({"text": "half an emoji \ud83d"}, "text: Value error, the text is not valid Unicode text"),
]
# Fields that fit the schema but not the request: 400, as in the original.
BAD_REQUESTS = [
    ({"streaming": True, "format": "mp3"}, "streaming only supports the wav format"),
    ({"text": "   "}, "text is empty"),
    ({"reference_id": "nobody"}, "unknown reference id 'nobody': stored voices are alice"),
    ({"reference_id": "../alice"}, "invalid reference id"),
    ({"references": [{"audio": b"not audio", "text": "x"}]}, "references[0].audio is not an audio file"),
    ({"references": [{"audio": REFERENCE, "text": " "}]}, "references[0].text is empty"),
]
BAD_FIELDS = [(*case, 422) for case in SCHEMA_ERRORS] + [(*case, 400) for case in BAD_REQUESTS]


@pytest.mark.parametrize(
    ("fields", "message", "status"), BAD_FIELDS, ids=[str(fields) for fields, _, _ in BAD_FIELDS]
)
def test_invalid_fields_are_422_or_400_with_a_message(gateway, fields, message, status):
    body = {key: value for key, value in {"text": TEXT, **SHORT, **fields}.items() if value is not MISSING}
    as_msgpack = "\ud83d" not in str(body.get("text"))  # msgpack cannot even carry a lone surrogate
    assert message in fish_error(post(gateway, "/v1/tts", body, as_msgpack=as_msgpack), status)


def test_bodies_that_cannot_be_read_are_400_422_or_415(gateway):
    url = gateway.url + "/v1/tts"
    bad_base64 = {"text": TEXT, "references": [{"audio": "@@not base64@@", "text": "x"}]}
    assert "base64" in fish_error(post(gateway, "/v1/tts", bad_base64), 422)
    broken_json = httpx.post(url, content=b"{not json", headers={"Content-Type": "application/json"})
    assert "not valid JSON" in fish_error(broken_json, 400)
    broken_msgpack = httpx.post(url, content=b"\xc1", headers={"Content-Type": "application/msgpack"})
    assert fish_error(broken_msgpack, 400) == "the body is not valid msgpack: FormatError"
    assert "must be an object" in fish_error(httpx.post(url, json=["a list"]), 422)
    for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "multipart/form-data"}, {}):
        response = httpx.post(url, content=b'{"text": "hi"}', headers=headers)
        assert "application/msgpack or application/json" in fish_error(response, 415)


def test_text_over_the_limit_is_400(keyed_gateway):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    too_long = post(keyed_gateway, "/v1/tts", {"text": "x" * (MAX_TEXT_LENGTH + 1), **SHORT}, headers=auth)
    assert f"at most {MAX_TEXT_LENGTH} are allowed" in fish_error(too_long, 400)
    at_limit = post(keyed_gateway, "/v1/tts", {"text": "y" * MAX_TEXT_LENGTH, **SHORT}, headers=auth)
    assert at_limit.status_code == 200


def test_the_api_key_is_required_except_for_health_and_the_webui(keyed_gateway):
    body = {"text": TEXT, **SHORT}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"}):
        response = post(keyed_gateway, "/v1/tts", body, headers=headers)
        assert "API key" in fish_error(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"
        assert "API key" in openai_error(
            post(keyed_gateway, "/v1/audio/speech", {"input": TEXT}, headers=headers), 401
        )
    auth = {"Authorization": f"Bearer {API_KEY}"}
    assert post(keyed_gateway, "/v1/tts", body, headers=auth).status_code == 200
    assert httpx.get(keyed_gateway.url + "/v1/health").status_code == 200
    assert httpx.get(keyed_gateway.url + "/").status_code == 200


def test_bodies_nested_too_deeply_are_400(gateway):
    url = gateway.url + "/v1/tts"
    depth = 100_000
    deep_json = '{"text": "a", "x": ' + "[" * depth + "]" * depth + "}"
    response = httpx.post(url, content=deep_json, headers={"Content-Type": "application/json"})
    assert "the body is not valid JSON: maximum recursion depth exceeded" in fish_error(response, 400)
    deep_msgpack = b"\x82\xa4text\xa1a\xa1x" + b"\x91" * depth + b"\x90"
    response = httpx.post(url, content=deep_msgpack, headers={"Content-Type": "application/msgpack"})
    assert fish_error(response, 400) == "the body is not valid msgpack: StackError"


def test_an_unreachable_triton_is_503_with_retry_after_on_health_and_requests(triton_deployment):
    with running_gateway(triton_deployment, triton_url=f"127.0.0.1:{free_port()}") as orphan:
        health = httpx.get(orphan.url + "/v1/health", timeout=30)
        assert "no Triton server reachable" in fish_error(health, 503)
        assert health.headers["retry-after"] == "1"
        for streaming in (False, True):
            response = post(orphan, "/v1/tts", {"text": TEXT, **SHORT, "streaming": streaming})
            assert "no Triton server reachable" in fish_error(response, 503)
            assert response.headers["retry-after"] == "1"


def test_a_request_that_produces_no_audio_is_the_originals_500_streaming_or_not(triton_deployment):
    with running_gateway(triton_deployment) as silent:

        async def no_chunks(inputs):
            return
            yield  # an async generator, as the real one

        silent.server.config.app.state.synthesizer.chunks = no_chunks
        for streaming in (False, True):
            response = post(silent, "/v1/tts", {"text": TEXT, **SHORT, "streaming": streaming})
            assert fish_error(response, 500) == "No audio generated, please check the input text."


def test_refusals_from_triton_are_400_with_tritons_message(gateway, triton_deployment):
    too_short = {"audio": wav_file(0.005, 44100, seed=1), "text": "Too short."}
    for streaming in (False, True):
        body = {"text": TEXT, **SHORT, "streaming": streaming, "references": [too_short]}
        message = fish_error(post(gateway, "/v1/tts", body, as_msgpack=True), 400)
        assert message.startswith("vqgan_encoder: refused:") and "too short" in message
    with running_gateway(triton_deployment, references_dir=None) as unaware:  # only Triton knows the voices
        for streaming in (False, True):
            body = {"text": TEXT, **SHORT, "streaming": streaming, "reference_id": "nobody"}
            message = fish_error(post(unaware, "/v1/tts", body), 400)
            assert message.startswith("llama_semantic: refused: unknown reference id 'nobody'")


def test_any_origin_may_call_the_api_and_preflights_need_no_key(keyed_gateway):
    preflight = httpx.options(
        keyed_gateway.url + "/v1/tts",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == "*"
    allowed = {name.strip().lower() for name in preflight.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    auth = {"Authorization": f"Bearer {API_KEY}"}
    for headers, status in (({**auth, "Origin": ORIGIN}, 200), ({"Origin": ORIGIN}, 401)):
        response = httpx.get(keyed_gateway.url + "/v1/references/list", headers=headers)
        assert response.status_code == status  # a page can read refusals too
        assert response.headers["access-control-allow-origin"] == "*"
        exposed = response.headers["access-control-expose-headers"]
        assert "Content-Disposition" in exposed and "Retry-After" in exposed


def test_cors_origins_restrict_or_turn_off_calls_from_other_pages(triton_deployment):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    with running_gateway(triton_deployment, cors_origins=(ORIGIN,)) as restricted:
        allowed = httpx.options(restricted.url + "/v1/tts", headers={**preflight, "Origin": ORIGIN})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
        other = {"Origin": "https://elsewhere.example.com"}
        assert httpx.options(restricted.url + "/v1/tts", headers={**preflight, **other}).status_code == 400
        listed = httpx.get(restricted.url + "/v1/references/list", headers=other)
        assert listed.status_code == 200 and "access-control-allow-origin" not in listed.headers
    with running_gateway(triton_deployment, cors_origins=()) as closed:
        assert (
            httpx.options(closed.url + "/v1/tts", headers={**preflight, "Origin": ORIGIN}).status_code == 405
        )
        listed = httpx.get(closed.url + "/v1/references/list", headers={"Origin": ORIGIN})
        assert "access-control-allow-origin" not in listed.headers


def test_405_names_the_allowed_methods(gateway):
    response = httpx.get(gateway.url + "/v1/tts")
    assert response.status_code == 405 and response.headers["allow"] == "POST"


def test_a_failure_after_the_stream_started_breaks_the_transfer(triton_deployment):
    """Once 200 and audio are sent, an error must not look like a complete (shorter) file."""
    with running_gateway(triton_deployment) as failing:
        synthesizer = failing.server.config.app.state.synthesizer

        async def one_chunk_then_failure(inputs):
            yield np.zeros(4096, np.float32)
            raise ServerError("llama_semantic: failed mid-stream")

        synthesizer.chunks = one_chunk_then_failure
        with (
            pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"),
            httpx.stream("POST", failing.url + "/v1/tts", json={"text": TEXT, "streaming": True}) as response,
        ):
            assert response.status_code == 200
            b"".join(response.iter_raw())


# ------------------------------------------------------------------------------------------------ /v1/vqgan


def test_vqgan_encode_and_decode_in_msgpack_and_json(gateway, triton):
    audios = [REFERENCE, SECOND_REFERENCE]
    expected_tokens = []
    for data in audios:
        audio, rate = read_file(data)
        inputs = {"AUDIO": audio, "SAMPLE_RATE": np.array([rate], np.int32)}
        expected_tokens.append(infer(triton, "vqgan_encoder", inputs, ("CODES",))["CODES"].tolist())

    packed = post(gateway, "/v1/vqgan/encode", {"audios": audios}, as_msgpack=True)
    assert packed.headers["content-type"] == "application/msgpack"
    assert msgpack.unpackb(packed.content)["tokens"] == expected_tokens
    as_json = post(gateway, "/v1/vqgan/encode", {"audios": [base64.b64encode(a).decode() for a in audios]})
    assert as_json.headers["content-type"] == "application/json"
    assert as_json.json()["tokens"] == expected_tokens

    decoded = post(gateway, "/v1/vqgan/decode", {"tokens": expected_tokens}, as_msgpack=True)
    audios_out = msgpack.unpackb(decoded.content)["audios"]
    for tokens, data in zip(expected_tokens, audios_out, strict=True):
        audio = infer(triton, "vqgan_decoder", {"CODES": np.array(tokens, np.int32)}, ("AUDIO",))["AUDIO"]
        np.testing.assert_array_equal(np.frombuffer(data, np.float16), audio.astype(np.float16))
    decoded_json = post(gateway, "/v1/vqgan/decode", {"tokens": expected_tokens}).json()["audios"]
    assert [base64.b64decode(item) for item in decoded_json] == audios_out


@pytest.mark.parametrize(
    ("tokens", "message", "status"),
    [
        ([[[1, 2], [3]]], "rows of equal length", 400),
        ([[[5000, 1]] * 8], "out of range", 400),
        ([[[2**64, 1]] * 8], "tokens[0] out of range: values must be in [0, 1024)", 400),
        ([[[1, 2]] * 7], "shape [8, frames]", 400),
        ([[[1, True]] * 8], "tokens.0.0.1: Input should be a valid integer", 422),
        ([], "tokens: List should have at least 1 item", 422),
    ],
)
def test_vqgan_decode_refuses_bad_tokens_with_400_or_422(gateway, tokens, message, status):
    assert message in fish_error(post(gateway, "/v1/vqgan/decode", {"tokens": tokens}), status)


def test_vqgan_decode_refuses_more_audio_than_encode_reads_before_calling_triton(gateway, monkeypatch):
    async def decode(codes, context_frames=0):
        raise AssertionError("the decoder was called")

    monkeypatch.setattr(gateway.server.config.app.state.synthesizer, "decode", decode)
    half = MAX_DECODE_REQUEST_FRAMES // 2 + 1  # each item fits, the two together do not
    tokens = [[[0] * half] * 8, [[0] * half] * 8]
    response = post(gateway, "/v1/vqgan/decode", {"tokens": tokens}, as_msgpack=True)
    message = f"tokens hold {2 * half} frames in all: at most {MAX_DECODE_REQUEST_FRAMES} (600 s of audio)"
    assert message in fish_error(response, 400)


def test_vqgan_encode_refuses_what_is_not_audio_with_400(gateway):
    response = post(gateway, "/v1/vqgan/encode", {"audios": [REFERENCE, b"nope"]}, as_msgpack=True)
    assert "audios[1] is not an audio file" in fish_error(response, 400)


# ------------------------------------------------------------------------------------------------ OpenAI


def test_openai_speech_speaks_with_stored_voices_and_streams(gateway, short_wav):
    base = {"model": "tts-1", "input": TEXT, **SHORT}
    alice = post(gateway, "/v1/audio/speech", {**base, "voice": STORED_VOICE, "response_format": "wav"})
    fish_alice = post(gateway, "/v1/tts", {"text": TEXT, **SHORT, "reference_id": STORED_VOICE})
    assert alice.status_code == 200 and alice.content == fish_alice.content

    default = post(gateway, "/v1/audio/speech", {**base, "voice": "alloy"})  # OpenAI's default format: mp3
    assert default.status_code == 200 and default.headers["content-type"] == "audio/mpeg"
    assert read_file(default.content)[1] == 44100
    builtin = post(gateway, "/v1/audio/speech", {**base, "voice": "alloy", "response_format": "wav"})
    assert builtin.content == short_wav  # OpenAI's voice names mean the model's own voice

    body = {**base, "response_format": "pcm", "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/audio/speech", json=body, timeout=120) as response:
        assert response.headers["content-type"] == "application/octet-stream"
        assert b"".join(response.iter_raw()) == short_wav[44:]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"voice": "nobody"}, "unknown reference id 'nobody'"),
        ({"response_format": "opus"}, "response_format"),
        ({"speed": 1.5}, "only 1.0 is supported"),
        ({"stream": True, "response_format": "mp3"}, "stream only supports wav and pcm"),
        ({"stream_format": "sse"}, "stream_format: Input should be 'audio'"),
        ({"temperature": "0.5"}, "temperature: Input should be a valid number"),
        ({"input": ""}, "text is empty"),
    ],
)
def test_openai_speech_errors_are_400_in_openais_shape(gateway, fields, message):
    body = {"model": "tts-1", "input": TEXT, **SHORT, **fields}
    assert message in openai_error(post(gateway, "/v1/audio/speech", body), 400)


def test_openai_speech_takes_json_only(gateway):
    response = post(gateway, "/v1/audio/speech", {"input": TEXT}, as_msgpack=True)
    assert "application/json" in openai_error(response, 415)


# ------------------------------------------------------------------------------------------------ load


async def _stream_all(url: str, bodies: list[dict]) -> list[tuple[float, list[float], bytes]]:
    """Run the streaming requests together; for each: when its response began (status and headers: the
    gateway sends them with the first audio), when each piece arrived, the bytes."""

    async def one(client: httpx.AsyncClient, body: dict):
        arrivals, data = [], bytearray()
        async with client.stream("POST", "/v1/tts", json=body) as response:
            began = time.perf_counter()
            assert response.status_code == 200
            async for piece in response.aiter_raw():
                arrivals.append(time.perf_counter())
                data += piece
        return began, arrivals, bytes(data)

    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        return await asyncio.gather(*(one(client, body) for body in bodies))


def test_eight_concurrent_streams_run_together_and_each_equals_its_solo_result(gateway):
    bodies = [
        {"text": f"Request number {i} speaks.", "max_new_tokens": 24, "seed": 100 + i} for i in range(8)
    ]
    results = asyncio.run(_stream_all(gateway.url, [{**body, "streaming": True} for body in bodies]))

    # Streams producing audio at the same moment: the gateway does not serialise them, it fills every
    # KV-cache slot of the server (the other requests wait for a slot there).
    spans = [(began, arrivals[-1]) for began, arrivals, _ in results]
    overlap = max(sum(first <= moment <= last for first, last in spans) for moment, _ in spans)
    assert overlap >= KV_SLOTS, spans
    for body, (_, _, data) in zip(bodies, results, strict=True):
        assert data[:44] == STREAM_HEADER
        assert data[44:] == wav_pcm(post(gateway, "/v1/tts", body).content).tobytes()


def test_clients_that_hang_up_free_their_lm_slots(gateway, triton_deployment):
    long = {"text": "Go on for a long time.", "max_new_tokens": 2000, "seed": 1}  # ~700 frames: seconds
    for _ in range(KV_SLOTS + 1):  # more hang-ups than slots: leaked slots would queue the last request
        with httpx.stream("POST", gateway.url + "/v1/tts", json={**long, "streaming": True}) as response:
            next(response.iter_raw())  # audio is flowing; leaving the block closes the connection
    for _ in range(KV_SLOTS + 1):  # complete-file clients that give up
        with pytest.raises(httpx.ReadTimeout):
            post(gateway, "/v1/tts", long, timeout=0.5)
    # Left alone, these requests would keep the server's slots busy for many seconds more: once their
    # clients are gone, nothing of them is decoding or queued within a few decode steps.
    wait_for_gauges(triton_deployment.server, pending=0, active=0, within_s=HANG_UP_DEADLINE_S)
    assert post(gateway, "/v1/tts", {"text": "Still served.", **SHORT}).status_code == 200


def test_a_body_over_the_limit_is_413_whether_or_not_its_length_is_declared(triton_deployment):
    body = json.dumps({"text": TEXT, "references": [{"audio": "A" * (2 * 2**20), "text": "x"}]}).encode()
    with running_gateway(triton_deployment, max_body_mb=1) as small:
        declared = httpx.post(
            small.url + "/v1/tts", content=body, headers={"Content-Type": "application/json"}, timeout=60
        )

        def chunked():  # no Content-Length: the limit holds while the body streams in
            yield from (body[i : i + 65536] for i in range(0, len(body), 65536))

        streamed = httpx.post(
            small.url + "/v1/tts", content=chunked(), headers={"Content-Type": "application/json"}, timeout=60
        )
        for response in (declared, streamed):
            assert "over 1 MB (the gateway's --max-body-mb)" in fish_error(response, 413)
        assert post(small, "/v1/tts", {"text": TEXT, **SHORT}).status_code == 200  # small bodies pass


def test_a_busy_triton_is_503_with_retry_after_streaming_or_not(triton_deployment):
    with running_gateway(triton_deployment) as busy:

        async def queue_full(inputs):
            raise server_error("llama_semantic", "busy: 4 requests already wait for one of 4 KV-cache slots")
            yield  # an async generator, as the real one

        busy.server.config.app.state.synthesizer.chunks = queue_full
        for streaming in (False, True):
            response = post(busy, "/v1/tts", {"text": TEXT, **SHORT, "streaming": streaming})
            assert "busy: 4 requests already wait" in fish_error(response, 503)
            assert response.headers["retry-after"] == "1"


def _raw(gateway, request: bytes, wait_s: float = 10.0) -> bytes:
    """Send raw bytes and read what the server answers before it closes or `wait_s` passes."""
    with socket.create_connection((gateway.host, gateway.port), timeout=wait_s) as connection:
        connection.sendall(request)
        answer = b""
        with contextlib.suppress(TimeoutError):
            while chunk := connection.recv(65536):
                answer += chunk
        return answer


def test_stalled_bodies_idle_connections_and_oversized_decodes_are_bounded(triton_deployment):
    with running_gateway(triton_deployment, body_timeout_s=0.5, max_connections=3) as gateway:
        started = time.monotonic()
        stalled = _raw(
            gateway,
            b"POST /v1/tts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"te',
        )
        assert stalled.startswith(b"HTTP/1.1 408") and b"--body-timeout" in stalled
        assert time.monotonic() - started < 5
        idle = [socket.create_connection((gateway.host, gateway.port)) for _ in range(3)]
        try:  # connections that send nothing: past the limit, a request is told 503 instead of waiting
            assert _raw(gateway, b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 503")
        finally:
            for connection in idle:
                connection.close()
        time.sleep(0.2)
        assert post(gateway, "/v1/vqgan/decode", {"tokens": [[[1]] * 8]}).status_code == 200
        too_big = httpx.post(
            gateway.url + "/v1/vqgan/decode",
            content=b'{"tokens": [' + b" " * (5 * 2**20) + b"]}",
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
        assert "over 4 MB (the most /v1/vqgan/decode takes)" in fish_error(too_big, 413)
        many = {"tokens": [[[1]] * 8] * (MAX_DECODE_REQUEST_FRAMES + 1)}
        assert "frames in all" in fish_error(post(gateway, "/v1/vqgan/decode", many), 400)
    assert gateway.server.config.timeout_graceful_shutdown == 30  # cut streams off 30 s after SIGTERM
