"""ASGI plumbing of the gateway: the API-key check, and answers that stop their work when the client leaves."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncGenerator, Coroutine
from http import HTTPStatus
from typing import Any, TypeVar

import anyio
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from fish_speech_triton.gateway.wire import error_response

T = TypeVar("T")


class BearerAuth:
    """With an API key, every /v1/ route but /v1/health needs `Authorization: Bearer <key>`."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None

    def allowed(self, scope: Scope) -> bool:
        path = scope["path"]
        if self.api_key is None or not path.startswith("/v1/") or path == "/v1/health":
            return True
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.allowed(scope):
            response = error_response(
                scope["path"],
                HTTPStatus.UNAUTHORIZED,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
            )
            response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class AudioStream(StreamingResponse):
    """A streamed answer that stops generating as soon as the client goes away, even while waiting for the
    next chunk (the stock response notices only at its next write): the Triton request is cancelled and its
    KV-cache slot freed at once.

    `source`: the generator the body reads from, closed with the body. A body that never started (the
    client left before its first byte) does not close what it would have read.
    """

    def __init__(self, content: AsyncGenerator[bytes, None], source: AsyncGenerator, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.source = source

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    with contextlib.suppress(OSError):  # the client left while we were writing
                        await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            # A client that leaves while a write is blocked cancels the write, not the body: close the body
            # now (and the LM stream inside it), not whenever a garbage collection reaches it.
            await self.body_iterator.aclose()
            await self.source.aclose()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_client_leaves(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await `work`, cancelling it (and so its LM request) if the client hangs up first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server is stopping
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientDisconnect()
    return task.result()
