"""With `max_pending_requests` set, a full queue answers "busy, retry later" at once (UNAVAILABLE), through a
real tritonserver: an overloaded server neither queues without end nor fails requests it already took."""

from __future__ import annotations

import re
import shutil

import pytest
import tritonclient.grpc as grpcclient
from triton_fixtures import wait_for_gauges

from client.triton_stream import ServerBusy, collect, make_input, stream
from fish_speech_triton.triton_server import TritonServer


@pytest.fixture(scope="module")
def small_queue_server(tmp_path_factory, triton_deployment):
    """llama_semantic alone, one KV slot and room for one waiting request."""
    root = tmp_path_factory.mktemp("busy")
    shutil.copytree(triton_deployment.repository / "llama_semantic", root / "llama_semantic")
    config = root / "llama_semantic" / "config.pbtxt"
    text = config.read_text()
    for key, value in (("kv_slots", "1"), ("max_pending_requests", "1")):
        text, found = re.subn(rf'(key: "{key}" value: {{ string_value: )"[^"]*"', rf'\1"{value}"', text)
        assert found == 1, key
    config.write_text(text)
    with TritonServer(root, log_file=root / "tritonserver.log") as server:
        yield server


def test_a_request_past_the_queue_limit_is_told_to_retry_and_the_others_are_served(
    small_queue_server, long_inputs
):
    url = small_queue_server.grpc_url
    clients = [grpcclient.InferenceServerClient(url) for _ in range(3)]
    decoding = stream(clients[0], "llama_semantic", long_inputs, ("CODES",))
    try:
        next(decoding)  # holds the only slot for seconds
        waiting = clients[1]
        waiting.start_stream(callback=lambda result, error: None)
        tensors = [make_input(name, value) for name, value in long_inputs.items()]
        waiting.async_stream_infer("llama_semantic", tensors, enable_empty_final_response=True)
        wait_for_gauges(small_queue_server, pending=1, active=1, within_s=5)
        with pytest.raises(ServerBusy, match="busy: 1 requests already wait for one of 1 KV-cache slots"):
            collect(clients[2], "llama_semantic", long_inputs, ("CODES",))
    finally:
        decoding.close()
        clients[1].stop_stream(cancel_requests=True)
    wait_for_gauges(small_queue_server, pending=0, active=0, within_s=5)
    served = collect(clients[2], "llama_semantic", {"TEXT": "Now there is room."}, ("CODES",))
    assert served.chunks  # the same client, once the queue has room
