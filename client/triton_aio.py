"""The asyncio form of `triton_stream.stream`, for clients that hold many streams at once (the load generator).

One gRPC stream per request, as in the synchronous helper: the request goes out, responses are yielded as
they arrive until Triton's final (empty) response, and leaving early cancels the request on the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient_aio
from tritonclient.utils import InferenceServerException

from client.triton_stream import (
    STREAM_SILENCE_S,
    ServerError,
    ServerUnavailable,
    failure,
    make_input,
    server_error,
)


async def connect_async(url: str, model: str) -> grpcclient_aio.InferenceServerClient:
    """An asyncio client for `url`, checked to reach a live server with `model` ready."""
    client = grpcclient_aio.InferenceServerClient(url)
    try:
        ready = await client.is_server_live() and await client.is_model_ready(model)
    except InferenceServerException as exc:
        await client.close()
        raise ServerUnavailable(f"no Triton server reachable at {url} (gRPC): {exc.message()}") from exc
    if not ready:
        await client.close()
        raise ServerUnavailable(f"model {model!r} is not ready on the Triton server at {url}")
    return client


async def stream_async(
    client: grpcclient_aio.InferenceServerClient,
    model: str,
    inputs: Mapping[str, object],
    outputs: tuple[str, ...],
    silence_s: float = STREAM_SILENCE_S,
    url: str = "",
) -> AsyncGenerator[dict[str, np.ndarray], None]:
    """Send one request on a new stream and yield each response's outputs as they arrive (the final one's
    too, when it carries any: Triton may set the final flag on the last chunk or send it alone).

    Closing the generator early (the caller went away) cancels the request on the server. A stream that
    ends without Triton's final response, or stays silent for `silence_s` seconds, is an error, never a
    silently short result.
    """
    done = asyncio.Event()
    # bad values fail here, not mid-call
    tensors = [make_input(name, value) for name, value in inputs.items()]

    async def requests():  # the request stream stays open until the last response has arrived
        yield {
            "model_name": model,
            "inputs": tensors,
            "parameters": {"triton_enable_empty_final_response": True},
        }
        await done.wait()

    responses = client.stream_infer(requests())
    finished = False
    try:
        while True:
            try:
                # not asyncio.wait_for: on Python 3.11 it can swallow a cancellation that arrives as the
                # response does, and the request then runs to its end after its client has gone
                async with asyncio.timeout(silence_s):
                    result, error = await anext(responses)
            except StopAsyncIteration:
                break
            except TimeoutError as exc:
                raise ServerError(f"{model}: no response for {silence_s:.0f} s") from exc
            if error is not None:
                finished = True
                raise server_error(model, error.message())
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
        raise failure(url, model, str(exc.code()), exc.details() or str(exc.code())) from exc
    finally:
        done.set()
        if not finished:
            responses.cancel()
