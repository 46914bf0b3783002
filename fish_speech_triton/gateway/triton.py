"""The gateway's asyncio gRPC link to Triton: one channel, one stream per HTTP request, so requests run
concurrently on the server's in-flight batching. Errors arrive as `ServerError` (Triton's message) or
`ServerUnavailable`, the same types the synchronous helpers in `client.triton_stream` raise.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import grpc
import numpy as np
from tritonclient.grpc import aio
from tritonclient.utils import InferenceServerException

from client.triton_stream import ServerError, ServerUnavailable, make_input


class TritonBackend:
    """Streams and plain calls to the models of one Triton server. Create it inside the running event loop."""

    def __init__(self, url: str, timeout_s: float = 600.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.client = aio.InferenceServerClient(url)

    async def close(self) -> None:
        await self.client.close()

    def _failure(self, model: str, status: str, message: str) -> ServerError | ServerUnavailable:
        if "UNAVAILABLE" in status:
            return ServerUnavailable(f"no Triton server reachable at {self.url} (gRPC): {message}")
        return ServerError(f"{model}: {message}")

    async def stream(
        self, model: str, inputs: Mapping[str, object], outputs: tuple[str, ...]
    ) -> AsyncIterator[dict[str, np.ndarray]]:
        """Send one request on a new stream; yield each non-final response's outputs as it arrives.

        Closing the generator early (the HTTP client went away) cancels the request on the server.
        """
        done = asyncio.Event()

        async def requests():  # the request stream stays open until the last response has arrived
            yield {
                "model_name": model,
                "inputs": [make_input(name, value) for name, value in inputs.items()],
                "parameters": {"triton_enable_empty_final_response": True},
            }
            await done.wait()

        responses = self.client.stream_infer(requests(), stream_timeout=self.timeout_s)
        finished = False
        try:
            async for result, error in responses:
                if error is not None:
                    finished = True
                    raise ServerError(f"{model}: {error.message()}")
                data = {name: result.as_numpy(name) for name in outputs if result.as_numpy(name) is not None}
                if data:
                    yield data
                final = result.get_response().parameters.get("triton_final_response")
                if final is not None and final.bool_param:
                    finished = True
                    return
            raise ServerError(f"{model}: the stream ended before the final response")
        except grpc.aio.AioRpcError as exc:
            finished = True
            raise self._failure(model, str(exc.code()), exc.details() or str(exc.code())) from exc
        finally:
            done.set()
            if not finished:
                responses.cancel()

    async def infer(
        self, model: str, inputs: Mapping[str, object], outputs: tuple[str, ...]
    ) -> dict[str, np.ndarray]:
        """A plain (non-decoupled) request."""
        try:
            result = await self.client.infer(
                model,
                [make_input(name, value) for name, value in inputs.items()],
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as exc:
            raise self._failure(model, str(exc.status()), exc.message()) from exc
        return {name: result.as_numpy(name) for name in outputs}
