"""The gateway's asyncio gRPC link to Triton: one channel, one stream per HTTP request, so requests run
concurrently on the server's in-flight batching. Errors arrive as `ServerError` (Triton's message) or
`ServerUnavailable`, the same types the synchronous helpers in `client.triton_stream` raise.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterable, Mapping

import numpy as np
from tritonclient.grpc import aio
from tritonclient.utils import InferenceServerException

from client.triton_aio import failure, stream_async
from client.triton_stream import STREAM_SILENCE_S, make_input

# A health check waits this long for Triton's answers: a probe must not hang on a stuck server.
READY_TIMEOUT_S = 2.0


class TritonBackend:
    """Streams and plain calls to the models of one Triton server. Create it inside the running event loop.

    A stream may take as long as its text needs, but fails after `silence_s` seconds without a response;
    a plain call (the codec) fails after `timeout_s`.
    """

    def __init__(self, url: str, timeout_s: float = 600.0, silence_s: float = STREAM_SILENCE_S) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.silence_s = silence_s
        self.client = aio.InferenceServerClient(url)

    async def close(self) -> None:
        await self.client.close()

    async def not_ready(self, models: Iterable[str]) -> str | None:
        """Why requests cannot run now (Triton unreachable or not ready, a model not ready), or None."""
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):  # all the checks together
                if not await self.client.is_server_ready(client_timeout=READY_TIMEOUT_S):
                    return f"the Triton server at {self.url} is not ready"
                for model in models:
                    if not await self.client.is_model_ready(model, client_timeout=READY_TIMEOUT_S):
                        return f"model {model!r} is not ready on the Triton server at {self.url}"
        except InferenceServerException as exc:
            return f"no Triton server reachable at {self.url} (gRPC): {exc.message()}"
        except TimeoutError:
            return f"the Triton server at {self.url} did not answer within {READY_TIMEOUT_S:g} s"
        return None

    def stream(
        self, model: str, inputs: Mapping[str, object], outputs: tuple[str, ...]
    ) -> AsyncGenerator[dict[str, np.ndarray], None]:
        """Send one request on a new stream; yield each non-final response's outputs as it arrives.

        Closing the generator early (the HTTP client went away) cancels the request on the server.
        """
        return stream_async(self.client, model, inputs, outputs, self.silence_s, self.url)

    async def infer(
        self, model: str, inputs: Mapping[str, object], outputs: tuple[str, ...]
    ) -> dict[str, np.ndarray]:
        """A plain (non-decoupled) request."""
        tensors = [make_input(name, value) for name, value in inputs.items()]
        try:
            result = await self.client.infer(model, tensors, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise failure(self.url, model, str(exc.status()), exc.message()) from exc
        return {name: result.as_numpy(name) for name in outputs}
