"""Streaming a decoupled Triton model over HTTP: `POST /v2/models/<model>/generate_stream` (server-sent events).

Triton's `/infer` endpoint refuses decoupled models; `generate_stream` takes the inputs as one JSON object
keyed by name and answers one `data: {...}` event per response. JSON carries no dtype: float outputs come
back as float32 and integer ones as int32, the types of every output of this repository.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping

import numpy as np

from client.triton_stream import STREAM_SILENCE_S, ServerError, ServerUnavailable, server_error
from fish_speech_triton.lm.text import utf8_bytes

DEFAULT_HTTP_URL = "127.0.0.1:8000"


def json_value(name: str, value: object) -> object:
    """Input `name`'s str, bytes or numpy value as JSON: a [1]-shaped tensor its scalar, others a (nested) list."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        utf8_bytes(value, name)  # JSON could carry a lone surrogate as an escape, but it is no text
        return value
    array = np.asarray(value)
    return array.reshape(()).item() if array.size == 1 and array.ndim <= 1 else array.tolist()


def _output_array(value: object) -> np.ndarray:
    array = np.asarray(value)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int32)
    return array


def _error_text(body: bytes) -> str:
    """Triton's message from an error body: `data: {"error": ...}` (SSE), `{"error": ...}` or plain text."""
    text = body.decode("utf-8", errors="replace").strip()
    payload = text[len("data:") :] if text.startswith("data:") else text
    try:
        return str(json.loads(payload)["error"])
    except (ValueError, KeyError, TypeError):
        return text or "no message"


def http_stream(
    url: str,
    model: str,
    inputs: Mapping[str, object],
    outputs: tuple[str, ...],
    silence_s: float = STREAM_SILENCE_S,
) -> Iterator[dict[str, np.ndarray]]:
    """Send one request to `generate_stream` and yield each response's outputs as its event arrives.

    Triton ends a complete answer with the last chunk of its chunked reply; a connection that breaks
    before it (or stays silent for `silence_s` seconds) is an error, never a silently short result.
    """
    body = json.dumps({name: json_value(name, value) for name, value in inputs.items()}).encode("utf-8")
    request = urllib.request.Request(
        f"http://{url}/v2/models/{model}/generate_stream",
        data=body,
        headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
    )
    try:
        response = urllib.request.urlopen(request, timeout=silence_s)  # noqa: S310 (the user's server address)
    except urllib.error.HTTPError as exc:
        raise server_error(model, _error_text(exc.read()), exc.code == 400) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServerUnavailable(f"no Triton server reachable at {url} (HTTP): {reason}") from exc
    with response:
        if response.headers.get("Transfer-Encoding", "").lower() != "chunked":
            raise ServerError(f"{model}: the server at {url} did not stream its answer (no chunked reply)")
        for line in _lines(response, model, silence_s):
            if not line.startswith(b"data:"):
                continue
            event = json.loads(line[len(b"data:") :])
            if "error" in event:
                raise server_error(model, str(event["error"]))
            data = {name: _output_array(event[name]) for name in outputs if name in event}
            if data:
                yield data


def _lines(response: http.client.HTTPResponse, model: str, silence_s: float) -> Iterator[bytes]:
    """The reply's lines; a reply cut short (no final chunk) or silent too long raises ServerError.

    Read with `read1`, which raises on a broken chunked body; line iteration goes through `peek`, which
    takes a connection closed mid-reply for the end of the body.
    """
    pending = b""
    try:
        while data := response.read1(65536):
            *lines, pending = (pending + data).split(b"\n")
            yield from lines
        if pending:
            yield pending
    except TimeoutError as exc:
        raise ServerError(f"{model}: no response for {silence_s:.0f} s") from exc
    except (http.client.HTTPException, OSError) as exc:
        raise ServerError(f"{model}: the connection broke before the answer was complete ({exc!r})") from exc
