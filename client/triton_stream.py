"""Streaming calls to the Fish-Speech Triton models over gRPC, shared by every client and test.

One stream carries one request: responses arrive on a queue until Triton's final (empty) response.
Errors from the server surface as `ServerError` with Triton's message (`RequestRefused` when the model
refused the request's input); an unreachable server as `ServerUnavailable` with the address. A stream
fails when no response arrives for `silence_s` seconds (the default `STREAM_SILENCE_S`), however long the
whole answer takes.
"""

from __future__ import annotations

import argparse
import queue
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from fish_speech_triton.errors import BUSY_MARK, REFUSAL_MARK, FishSpeechError
from fish_speech_triton.lm.text import utf8_bytes

DEFAULT_URL = "127.0.0.1:8001"
# Longest wait for a stream's next response (the first one may wait for a free KV-cache slot).
STREAM_SILENCE_S = 600.0


class ServerError(FishSpeechError):
    """The server answered a request with an error."""


class RequestRefused(ServerError):
    """The model refused the request's input (Triton's INVALID_ARG): the client's to fix, not the server's."""


class ServerBusy(ServerError):
    """The server holds as many waiting requests as it takes (UNAVAILABLE, `busy: `): retry later."""


class ServerUnavailable(FishSpeechError):
    """No Triton server answers at the address, or the model is not ready."""


def server_error(model: str, message: str, invalid_argument: bool = False) -> ServerError:
    """The error for `model`'s answer `message`; a refusal of the input when the status or the mark says so."""
    refused = invalid_argument or REFUSAL_MARK in message
    kind = RequestRefused if refused else ServerBusy if BUSY_MARK in message else ServerError
    return kind(f"{model}: {message}")


def failure(url: str, model: str, status: str, message: str) -> ServerError | ServerUnavailable:
    """The error for a failed call: the server unreachable, or its answer for `model`."""
    if "UNAVAILABLE" in status and BUSY_MARK not in message:  # busy is UNAVAILABLE too, but it answered
        return ServerUnavailable(f"no Triton server reachable at {url} (gRPC): {message}")
    return server_error(model, message, "INVALID_ARGUMENT" in status)


def make_input(name: str, value: object) -> grpcclient.InferInput:
    """An InferInput from a str/bytes (BYTES [1]) or a numpy array (its shape and dtype as they are)."""
    if isinstance(value, str):
        value = utf8_bytes(value, name)
    array = np.array([value], dtype=object) if isinstance(value, bytes) else np.asarray(value)
    tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def connect(url: str = DEFAULT_URL, model: str | None = None) -> grpcclient.InferenceServerClient:
    """A client for `url`, checked to reach a live server (and `model`, when named, to be ready)."""
    client = grpcclient.InferenceServerClient(url)
    try:
        live = client.is_server_live()
        ready = model is None or client.is_model_ready(model)
    except InferenceServerException as exc:
        raise ServerUnavailable(f"no Triton server reachable at {url} (gRPC): {exc.message()}") from exc
    if not live:
        raise ServerUnavailable(f"the Triton server at {url} is not live")
    if not ready:
        raise ServerUnavailable(f"model {model!r} is not ready on the Triton server at {url}")
    return client


@dataclass
class StreamResult:
    """What one streamed request returned, with its timing."""

    chunks: list[dict[str, np.ndarray]] = field(default_factory=list)
    started: float = 0.0
    first_chunk_at: float | None = None
    finished_at: float = 0.0

    @property
    def time_to_first_chunk(self) -> float | None:
        return None if self.first_chunk_at is None else self.first_chunk_at - self.started

    @property
    def elapsed(self) -> float:
        return self.finished_at - self.started

    def concatenated(self, name: str, axis: int = -1) -> np.ndarray:
        parts = [chunk[name] for chunk in self.chunks if name in chunk]
        return np.concatenate(parts, axis=axis) if parts else np.zeros(0, dtype=np.float32)


def stream(
    client: grpcclient.InferenceServerClient,
    model: str,
    inputs: Mapping[str, object],
    outputs: tuple[str, ...],
    silence_s: float = STREAM_SILENCE_S,
) -> Iterator[dict[str, np.ndarray]]:
    """Send one request on a new stream and yield each response's outputs as they arrive (the final one's
    too, when it carries any: Triton may set the final flag on the last chunk or send it alone).

    Closing the generator early cancels the request on the server.
    """
    responses: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    finished = False
    try:
        client.async_stream_infer(
            model,
            [make_input(name, value) for name, value in inputs.items()],
            enable_empty_final_response=True,
        )
        while True:
            try:
                result, error = responses.get(timeout=silence_s)
            except queue.Empty as exc:
                raise ServerError(f"{model}: no response for {silence_s:.0f} s") from exc
            if error is not None:
                message = error.message() if isinstance(error, InferenceServerException) else str(error)
                finished = True
                raise server_error(model, message)
            response = result.get_response()
            final = response.parameters.get("triton_final_response")
            data = {name: result.as_numpy(name) for name in outputs if result.as_numpy(name) is not None}
            if data:
                yield data
            if final is not None and final.bool_param:
                finished = True
                return
    finally:
        client.stop_stream(cancel_requests=not finished)


def collect(
    client: grpcclient.InferenceServerClient,
    model: str,
    inputs: Mapping[str, object],
    outputs: tuple[str, ...],
    silence_s: float = STREAM_SILENCE_S,
) -> StreamResult:
    result = StreamResult(started=time.perf_counter())
    for chunk in stream(client, model, inputs, outputs, silence_s):
        if result.first_chunk_at is None:
            result.first_chunk_at = time.perf_counter()
        result.chunks.append(chunk)
    result.finished_at = time.perf_counter()
    return result


def infer(
    client: grpcclient.InferenceServerClient,
    model: str,
    inputs: Mapping[str, object],
    outputs: tuple[str, ...],
    url: str = DEFAULT_URL,
) -> dict[str, np.ndarray]:
    """A plain (non-decoupled) request to the server at `url` (named in errors)."""
    try:
        result = client.infer(model, [make_input(name, value) for name, value in inputs.items()])
    except InferenceServerException as exc:
        raise failure(url, model, str(exc.status()), exc.message()) from exc
    return {name: result.as_numpy(name) for name in outputs}


def add_url_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=DEFAULT_URL, help=f"Triton gRPC address HOST:PORT (default {DEFAULT_URL})"
    )
