"""The streaming helpers of `client` against small fake servers: a broken or silent stream is an error,
never a silently short result, and a refusal of the input is told apart from a server failure."""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from client.triton_aio import stream_async
from client.triton_http import http_stream
from client.triton_stream import (
    RequestRefused,
    ServerBusy,
    ServerError,
    ServerUnavailable,
    failure,
    infer,
    make_input,
    server_error,
)
from client.tts import add_sampling_arguments, sampling_inputs
from fish_speech_triton.errors import InputError

EVENT = b'data: {"AUDIO": [0.5, 0.25]}\n\n'


@contextmanager
def fake_server(answer: Callable[[socket.socket], None]) -> Iterator[str]:
    """A one-connection HTTP server on a free port; `answer` writes whatever it likes on the socket."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            answer(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        thread.join(5)
        listener.close()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def collect(url: str, silence_s: float = 10.0) -> list[dict]:
    return list(http_stream(url, "ensemble", {"TEXT": "hi"}, ("AUDIO",), silence_s))


def test_a_complete_chunked_reply_gives_every_event():
    with fake_server(lambda c: c.sendall(HEAD + chunk(EVENT) + chunk(EVENT) + b"0\r\n\r\n")) as url:
        events = collect(url)
    assert len(events) == 2 and events[0]["AUDIO"].tolist() == [0.5, 0.25]


def test_a_reply_cut_before_its_last_chunk_is_an_error():
    with (
        fake_server(lambda c: c.sendall(HEAD + chunk(EVENT))) as url,
        pytest.raises(ServerError, match="connection broke before the answer was complete"),
    ):
        collect(url)


def test_a_reply_that_is_not_streamed_is_an_error():
    plain = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n" + EVENT
    with fake_server(lambda c: c.sendall(plain)) as url, pytest.raises(ServerError, match="did not stream"):
        collect(url)


def test_a_silent_stream_is_an_error_after_the_silence_limit():
    release = threading.Event()

    def stall(connection: socket.socket) -> None:
        connection.sendall(HEAD + chunk(EVENT))
        release.wait(5)

    with fake_server(stall) as url, pytest.raises(ServerError, match="no response for 1 s"):
        try:
            collect(url, silence_s=1.0)
        finally:
            release.set()


def test_refusals_are_told_apart_from_failures():
    assert isinstance(server_error("llama_semantic", "refused: TEXT is empty"), RequestRefused)
    assert isinstance(
        server_error("vqgan_encoder", "AUDIO is too short", invalid_argument=True), RequestRefused
    )
    failure = server_error("llama_semantic", "RuntimeError: CUDA out of memory")
    assert type(failure) is ServerError and str(failure) == "llama_semantic: RuntimeError: CUDA out of memory"


def test_a_server_gone_after_connecting_is_reported_as_unreachable():
    """A plain call to a server that stopped answering names the address, not a model failure."""
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        url = f"127.0.0.1:{sock.getsockname()[1]}"
    client = grpcclient.InferenceServerClient(url)
    with pytest.raises(ServerUnavailable, match=f"no Triton server reachable at {url}"):
        infer(client, "vqgan_decoder", {"CODES": np.zeros((8, 2), np.int32)}, ("AUDIO",), url)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_lone_surrogate_is_refused_before_sending(protocol: str):
    """Half an emoji cut in two is no text: both clients say so, naming the input, instead of sending it."""
    text = {"TEXT": "half an emoji \ud83d"}
    with pytest.raises(
        InputError, match="TEXT is not valid Unicode text: surrogates not allowed at character 14"
    ):
        if protocol == "grpc":
            make_input("TEXT", text["TEXT"])
        else:  # nothing listens at this address: the refusal comes before any connection
            list(http_stream("127.0.0.1:1", "ensemble", text, ("AUDIO",)))


def sampling_args(*argv: str) -> dict[str, np.ndarray]:
    parser = argparse.ArgumentParser()
    add_sampling_arguments(parser)
    return sampling_inputs(parser.parse_args(argv))


def test_sampling_options_become_the_inputs_with_their_dtypes():
    inputs = sampling_args("--stream-chunk-frames", "64", "--seed", str(2**63 - 1), "--chunk-length", "300")
    assert inputs["STREAM_CHUNK_FRAMES"].dtype == np.int32 and inputs["STREAM_CHUNK_FRAMES"].tolist() == [64]
    assert inputs["SEED"].dtype == np.int64 and inputs["SEED"].tolist() == [2**63 - 1]
    assert inputs["CHUNK_LENGTH"].tolist() == [300] and "TOP_P" not in inputs  # unset: the server's default


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--chunk-length", str(2**32 + 200)), "4294967496 does not fit a signed 32-bit integer"),
        (("--max-new-tokens", "3000000000"), "does not fit a signed 32-bit integer"),
        (("--seed", str(2**63)), "does not fit a signed 64-bit integer"),
    ],
)
def test_a_number_too_large_for_its_input_is_an_error_not_wrapped(argv, message, capsys):
    with pytest.raises(SystemExit):
        sampling_args(*argv)
    assert message in capsys.readouterr().err


def test_a_busy_server_is_told_apart_from_a_failure_and_from_an_unreachable_one():
    message = "busy: 4 requests already wait for one of 8 KV-cache slots (the model's max_pending_requests)"
    assert type(server_error("llama_semantic", message)) is ServerBusy
    busy = failure("127.0.0.1:8001", "llama_semantic", "StatusCode.UNAVAILABLE", message)
    assert type(busy) is ServerBusy and isinstance(busy, ServerError)  # it answered: not unreachable
    gone = failure("127.0.0.1:8001", "llama_semantic", "StatusCode.UNAVAILABLE", "failed to connect")
    assert type(gone) is ServerUnavailable


def test_a_cancel_that_meets_a_response_still_cancels_the_request():
    """The caller leaves in the same loop turn as a response arrives: the request must still be cancelled on
    the server, not read to its end (asyncio.wait_for on Python 3.11 lost such a cancellation)."""

    class Response:
        def as_numpy(self, name):
            return np.zeros((8, 1), np.int32)

        def get_response(self):
            return SimpleNamespace(parameters={})

    class Call:  # what the aio client's stream_infer returns: responses, and cancel()
        def __init__(self) -> None:
            self.next: asyncio.Future = asyncio.get_running_loop().create_future()
            self.cancelled = False

        def __aiter__(self):
            return self

        async def __anext__(self):
            return await self.next

        def cancel(self) -> None:
            self.cancelled = True

    async def main() -> None:
        call = Call()
        client = SimpleNamespace(stream_infer=lambda requests: call)
        responses = stream_async(client, "llama_semantic", {"TEXT": "hi"}, ("CODES",))
        reader = asyncio.ensure_future(anext(responses))
        for _ in range(5):  # until it waits for the first response
            await asyncio.sleep(0)
        call.next.set_result((Response(), None))
        reader.cancel()  # the same loop turn
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert call.cancelled

    asyncio.run(main())
