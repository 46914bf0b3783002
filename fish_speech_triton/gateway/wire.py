"""Bodies and errors on the wire: msgpack or JSON in, the same format out, errors as the original shapes them.

Fish-Speech endpoints answer errors as `{"statusCode", "error", "message"}` (the original server's shape);
the OpenAI endpoint as `{"error": {"message", "type", ...}}`, the shape OpenAI clients parse.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping
from http import HTTPStatus

import msgpack
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from fish_speech_triton.errors import InputError
from fish_speech_triton.gateway.schemas import InvalidBody

MSGPACK_TYPES = frozenset({"application/msgpack", "application/x-msgpack", "application/vnd.msgpack"})
JSON_TYPE = "application/json"
OPENAI_PREFIX = "/v1/audio/"


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _limited_body(request: Request, limit: int, idle_s: float, bound: str) -> bytes:
    """The whole body, refused with 413 as soon as it passes `limit` bytes (a client cannot make the
    gateway hold an unbounded upload in memory), and with 408 when nothing arrives for `idle_s` seconds
    (nor hold a connection with a body that never comes)."""

    def too_large() -> HTTPException:
        return HTTPException(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"the request body is over {limit / 2**20:g} MB ({bound})",
        )

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large()
    body = bytearray()
    pieces = request.stream()
    while True:
        try:
            async with asyncio.timeout(idle_s):
                piece = await anext(pieces)
        except StopAsyncIteration:
            return bytes(body)
        except TimeoutError:
            raise HTTPException(
                HTTPStatus.REQUEST_TIMEOUT,
                f"the request body sent nothing for {idle_s:g} s (the gateway's --body-timeout)",
                headers={"Connection": "close"},  # the rest of that body would be read as a request
            ) from None
        body += piece
        if len(body) > limit:
            raise too_large()


async def read_body(
    request: Request, *, msgpack_allowed: bool = True, limit: int | None = None
) -> tuple[dict, str]:
    """The request body as a dict, and its media type (answers go back in the same format). `limit`: a
    route's own, smaller bound on its body (bytes; default the gateway's --max-body-mb)."""
    media = media_type(request)
    allowed = (MSGPACK_TYPES if msgpack_allowed else frozenset()) | {JSON_TYPE}
    if media not in allowed:
        names = "application/msgpack or application/json" if msgpack_allowed else JSON_TYPE
        raise HTTPException(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"Content-Type must be {names}, got {media or 'none'!r}"
        )
    state = request.app.state
    if limit is not None and limit < state.max_body_bytes:
        bound = f"the most {request.url.path} takes"
    else:
        limit, bound = state.max_body_bytes, "the gateway's --max-body-mb"
    body = await _limited_body(request, limit, state.body_timeout_s, bound)
    return await asyncio.to_thread(_decoded, body, media), media  # tens of MB parse for a while


def _decoded(body: bytes, media: str) -> dict:
    try:
        payload = json.loads(body) if media == JSON_TYPE else msgpack.unpackb(body, raw=False)
    except (ValueError, RecursionError, msgpack.UnpackException) as exc:  # RecursionError: nested too deep
        kind = "JSON" if media == JSON_TYPE else "msgpack"
        raise InputError(f"the body is not valid {kind}: {str(exc) or type(exc).__name__}") from exc
    if not isinstance(payload, dict):
        raise InvalidBody(f"the body must be an object (a map), got {type(payload).__name__}")
    return payload


def _jsonable(value: object) -> object:
    """JSON has no bytes: they travel base64-encoded, as in requests."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value


def packed(payload: dict, media: str) -> Response:
    """`payload` in the request's format: msgpack for msgpack requests, JSON (bytes as base64) otherwise."""
    if media in MSGPACK_TYPES:
        return Response(msgpack.packb(payload, use_bin_type=True), media_type="application/msgpack")
    return JSONResponse(_jsonable(payload))


def error_response(
    path: str, status: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    if path.startswith(OPENAI_PREFIX):
        kind = "invalid_request_error" if status < 500 else "server_error"
        body: dict = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    else:
        body = {"statusCode": int(status), "error": HTTPStatus(status).phrase, "message": message}
    return JSONResponse(body, status_code=status, headers=headers)
