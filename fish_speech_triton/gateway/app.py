"""The gateway's ASGI app: routes, CORS, API-key check, error answers and the WebUI's static files."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from client.triton_stream import RequestRefused, ServerBusy, ServerUnavailable
from fish_speech_triton.audio import CODEC_SAMPLE_RATE, MAX_DECODE_SECONDS
from fish_speech_triton.errors import FishSpeechError, InputError
from fish_speech_triton.gateway.asgi import AudioStream, BearerAuth, unless_client_leaves
from fish_speech_triton.gateway.encoding import MEDIA_TYPES, encode_audio, pcm16, wav_header
from fish_speech_triton.gateway.options import GatewaySettings
from fish_speech_triton.gateway.schemas import (
    DecodeRequest,
    EncodeRequest,
    InvalidBody,
    Sampling,
    SpeechRequest,
    TTSRequest,
    parse,
)
from fish_speech_triton.gateway.synthesis import STAGE_MODELS, Synthesizer
from fish_speech_triton.gateway.triton import TritonBackend
from fish_speech_triton.gateway.wire import OPENAI_PREFIX, error_response, packed, read_body
from fish_speech_triton.serving.codec_runtime import CODE_LIMIT, SAMPLES_PER_FRAME, validate_codes
from fish_speech_triton.serving.references import ReferenceStore

log = logging.getLogger("fish_speech_triton.gateway")

WEBUI_DIR = Path(__file__).parent / "webui"
# OpenAI's built-in voice names: clients send them by default; without a stored voice of that name they
# get the model's own voice.
OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse"}
)
# /v1/vqgan/decode answers at most as much audio as /v1/vqgan/encode reads: a small body of codes would
# otherwise ask for minutes of decoder time and an answer of hundreds of MB.
MAX_DECODE_REQUEST_FRAMES = MAX_DECODE_SECONDS * CODEC_SAMPLE_RATE // SAMPLES_PER_FRAME
# The most codes one decode request can hold (12,919 frames of 8 values) take ~0.5 MB as JSON: room for
# spaces and any layout, without megabytes of tiny items to validate.
DECODE_BODY_BYTES = 4 * 2**20
NO_AUDIO = "No audio generated, please check the input text."  # the original's 500
RETRY_AFTER = {"Retry-After": "1"}


def _voices_are_encoded_by_triton(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    raise InputError("the gateway only lists stored voices; Triton's llama_semantic encodes them")


def _synthesizer(request: Request) -> Synthesizer:
    return request.app.state.synthesizer


def _attachment(audio_format: str) -> dict[str, str]:
    return {"Content-Disposition": f"attachment; filename=audio.{audio_format}"}


async def _pcm_stream(header: bytes, first: np.ndarray, rest: AsyncIterator[np.ndarray]):
    yield header  # the response closes `rest` (its source) when it ends
    yield pcm16(first).tobytes()
    async for chunk in rest:
        yield pcm16(chunk).tobytes()


async def _first(chunks: AsyncIterator[np.ndarray]) -> np.ndarray | None:
    async for chunk in chunks:
        return chunk
    return None


async def _speak(request: Request, tts_request: TTSRequest) -> Response:
    """Run a checked TTS request: a complete file, or (streaming) a header and PCM as chunks arrive.

    A stream's status is sent with its first audio, so failures before any audio still get a 500, and so
    does a request that produces no audio at all, streaming or not, as the original answers a complete one.
    """
    synthesizer = _synthesizer(request)
    inputs = await synthesizer.inputs(tts_request)
    audio_format = tts_request.format
    if tts_request.streaming:
        chunks = synthesizer.chunks(inputs)
        first = await unless_client_leaves(request, _first(chunks))
        if first is None:
            raise HTTPException(HTTPStatus.INTERNAL_SERVER_ERROR, NO_AUDIO)
        header = wav_header() if audio_format == "wav" else b""
        return AudioStream(
            _pcm_stream(header, first, chunks),
            chunks,
            media_type=MEDIA_TYPES[audio_format],
            headers=_attachment(audio_format),
        )
    audio = await unless_client_leaves(request, synthesizer.audio(inputs))
    if not audio.size:
        raise HTTPException(HTTPStatus.INTERNAL_SERVER_ERROR, NO_AUDIO)
    data = await asyncio.to_thread(encode_audio, audio, audio_format)
    return Response(data, media_type=MEDIA_TYPES[audio_format], headers=_attachment(audio_format))


async def health(request: Request) -> Response:
    """The original's `{"status": "ok"}` while Triton and the models the gateway calls are ready; else 503."""
    problem = await _synthesizer(request).backend.not_ready(STAGE_MODELS)
    if problem is not None:
        return error_response(request.url.path, HTTPStatus.SERVICE_UNAVAILABLE, problem, RETRY_AFTER)
    return JSONResponse({"status": "ok"})


async def tts(request: Request) -> Response:
    """The original `POST /v1/tts`."""
    payload, _ = await read_body(request)
    tts_request = await asyncio.to_thread(parse, TTSRequest, payload)  # base64 references
    if tts_request.streaming and tts_request.format != "wav":
        raise InputError(f"streaming only supports the wav format, got {tts_request.format!r}")
    return await _speak(request, tts_request)


async def speech(request: Request) -> Response:
    """OpenAI's `POST /v1/audio/speech`: `voice` is a stored reference id or one of OpenAI's names."""
    payload, _ = await read_body(request, msgpack_allowed=False)
    body = parse(SpeechRequest, payload)
    if body.stream and body.response_format not in ("wav", "pcm"):
        raise InputError(f"stream only supports wav and pcm, got {body.response_format!r}")
    synthesizer = _synthesizer(request)
    voice = (body.voice or "").strip()
    if voice.lower() in OPENAI_VOICES and voice not in synthesizer.voice_ids():
        voice = ""
    tts_request = TTSRequest(
        text=body.input,
        format=body.response_format,
        streaming=body.stream,
        reference_id=voice or None,
        **body.model_dump(include=set(Sampling.model_fields)),
    )
    return await _speak(request, tts_request)


async def vqgan_encode(request: Request) -> Response:
    """`{audios: [file bytes]}` -> `{tokens: [[8][frames]]}` through `vqgan_encoder`."""
    payload, media = await read_body(request)
    body = await asyncio.to_thread(parse, EncodeRequest, payload)  # base64 audio
    synthesizer = _synthesizer(request)
    codes = await asyncio.gather(
        *(synthesizer.encode(data, f"audios[{index}]") for index, data in enumerate(body.audios))
    )
    return packed({"tokens": [item.tolist() for item in codes]}, media)


def _codes_to_decode(payload: dict) -> list[np.ndarray]:
    """The checked `[8, frames]` arrays of a decode request. The frames are counted from the lists' lengths
    first: a body of many tiny items costs its validation nothing when it asks for too much anyway."""
    tokens = payload.get("tokens")
    if isinstance(tokens, list):
        _check_decode_frames(
            sum(
                len(item[0])
                for item in tokens
                if isinstance(item, list) and item and isinstance(item[0], list)
            )
        )
    body = parse(DecodeRequest, payload)
    codes = []
    for index, item in enumerate(body.tokens):
        try:
            array = np.array(item, dtype=np.int64)
        except OverflowError as exc:
            raise InputError(f"tokens[{index}] out of range: values must be in [0, {CODE_LIMIT})") from exc
        except ValueError as exc:
            raise InputError(
                f"tokens[{index}] must be [8][frames] integers with rows of equal length"
            ) from exc
        codes.append(validate_codes(array, f"tokens[{index}]"))
    _check_decode_frames(sum(item.shape[1] for item in codes))
    return codes


def _check_decode_frames(frames: int) -> None:
    if frames > MAX_DECODE_REQUEST_FRAMES:
        raise InputError(
            f"tokens hold {frames} frames in all: at most {MAX_DECODE_REQUEST_FRAMES} "
            f"({MAX_DECODE_SECONDS} s of audio) are decoded per request"
        )


async def vqgan_decode(request: Request) -> Response:
    """`{tokens: [[8][frames]]}` -> `{audios: [float16 PCM bytes at 44.1 kHz]}` through `vqgan_decoder`.

    Its body is bounded (DECODE_BODY_BYTES), and its checks and answer run off the event loop: other
    requests go on while a large one is parsed."""
    payload, media = await read_body(request, limit=DECODE_BODY_BYTES)
    codes = await asyncio.to_thread(_codes_to_decode, payload)
    synthesizer = _synthesizer(request)
    audios = await asyncio.gather(*(synthesizer.decode(item) for item in codes))
    return await asyncio.to_thread(
        packed, {"audios": [audio.astype(np.float16).tobytes() for audio in audios]}, media
    )


async def list_references(request: Request) -> Response:
    """The stored voices the gateway sees (empty without --references-dir); the WebUI offers them."""
    ids = _synthesizer(request).voice_ids()
    return JSONResponse(
        {"success": True, "reference_ids": ids, "message": f"Found {len(ids)} reference voices"}
    )


async def webui(request: Request) -> Response:
    return FileResponse(WEBUI_DIR / "index.html")


async def _input_error(request: Request, exc: Exception) -> Response:
    return error_response(request.url.path, HTTPStatus.BAD_REQUEST, str(exc))


async def _invalid_body(request: Request, exc: Exception) -> Response:
    """A body that does not fit the schema: 422 as the original's framework answers it, 400 as OpenAI does."""
    openai = request.url.path.startswith(OPENAI_PREFIX)
    status = HTTPStatus.BAD_REQUEST if openai else HTTPStatus.UNPROCESSABLE_ENTITY
    return error_response(request.url.path, status, str(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # 401, 404, 405, 415: Starlette's routing and read_body
    return error_response(request.url.path, exc.status_code, exc.detail, exc.headers)  # 405 keeps Allow


async def _client_left(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)  # nobody reads it: the connection is gone


async def _refused(request: Request, exc: Exception) -> Response:
    """Triton refused the request's input (INVALID_ARG): the client's to fix, so a 400 with Triton's reason."""
    log.info("%s %s refused by Triton: %s", request.method, request.url.path, exc)
    return error_response(request.url.path, HTTPStatus.BAD_REQUEST, str(exc))


async def _unavailable(request: Request, exc: Exception) -> Response:
    """Triton holds as many waiting requests as it takes, or cannot be reached: 503, and when to try again."""
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return error_response(request.url.path, HTTPStatus.SERVICE_UNAVAILABLE, str(exc), RETRY_AFTER)


async def _failure(request: Request, exc: Exception) -> Response:
    if isinstance(exc, FishSpeechError):
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
        message = f"generation failed: {exc}"
    else:
        log.exception("%s %s failed unexpectedly", request.method, request.url.path)
        message = f"internal error ({type(exc).__name__}); see the gateway's log"
    return error_response(request.url.path, HTTPStatus.INTERNAL_SERVER_ERROR, message)


def create_app(settings: GatewaySettings) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette):
        # The asyncio gRPC channel belongs to the server's event loop: open it there.
        backend = TritonBackend(settings.triton_url)
        voices = None
        if settings.references_dir is not None:
            voices = ReferenceStore(settings.references_dir, _voices_are_encoded_by_triton)
        app.state.synthesizer = Synthesizer(backend, voices, settings.max_text_length)
        app.state.max_body_bytes = settings.max_body_mb * 2**20
        app.state.body_timeout_s = settings.body_timeout_s
        try:
            yield
        finally:
            await backend.close()

    routes = [
        Route("/", webui, methods=["GET"]),
        Mount("/webui", StaticFiles(directory=WEBUI_DIR), name="webui"),
        Route("/v1/health", health, methods=["GET", "POST"]),
        Route("/v1/tts", tts, methods=["POST"]),
        Route("/v1/audio/speech", speech, methods=["POST"]),
        Route("/v1/vqgan/encode", vqgan_encode, methods=["POST"]),
        Route("/v1/vqgan/decode", vqgan_decode, methods=["POST"]),
        Route("/v1/references/list", list_references, methods=["GET"]),
    ]
    middleware = [Middleware(BearerAuth, api_key=settings.api_key)]
    if settings.cors_origins:
        # Outermost: a browser's preflight carries no API key and is answered before the key check.
        cors = Middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Content-Disposition", "Retry-After"],
            max_age=600,
        )
        middleware.insert(0, cors)
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            InputError: _input_error,
            InvalidBody: _invalid_body,
            RequestRefused: _refused,
            ServerBusy: _unavailable,
            ServerUnavailable: _unavailable,
            HTTPException: _http_error,
            ClientDisconnect: _client_left,
            FishSpeechError: _failure,  # Triton failed
            Exception: _failure,  # a bug: logged with its traceback, the user gets one line
        },
        lifespan=lifespan,
    )
