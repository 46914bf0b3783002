"""A config.pbtxt that cannot serve is refused when Triton loads the model, with a message naming the
parameter: a typo is never taken for the default, and nothing minutes-long is loaded first."""

from __future__ import annotations

import re
import shutil
import time

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from fish_speech_triton.triton_server import TritonServer

BROKEN = [
    (
        "vqgan_decoder",
        'key: "max_frames"',
        'key: "max_frame"',
        r"max_frame is not one of this model's.*max_frames",
    ),
    ("vqgan_encoder", r'key: "onnx_file" value: \{ string_value: "[^"]*" \}', "", "onnx_file is missing"),
    (
        "llama_semantic",
        r'key: "stream_chunk_frames" value: \{ string_value: "\d+" \}',
        'key: "stream_chunk_frames" value: { string_value: "5000" }',
        "stream_chunk_frames must be an integer from 1 to 1024, got '5000'",
    ),
    (
        "llama_semantic",
        r'key: "device" value: \{ string_value: "cpu" \}',
        'key: "device" value: { string_value: "cuda" } }\n'
        'parameters { key: "weight_quantization" value: { string_value: "int4" }',
        "weight_quantization runs on CPU only",
    ),
]


@pytest.fixture(scope="module")
def broken_repository(tmp_path_factory, triton_deployment):
    """One copy of a served model per broken config, under its own name, on a server that loads on demand."""
    root = tmp_path_factory.mktemp("broken")
    names = []
    for index, (model, pattern, replacement, _) in enumerate(BROKEN):
        name = f"broken_{index}_{model}"
        shutil.copytree(triton_deployment.repository / model, root / name)
        config = root / name / "config.pbtxt"
        text = config.read_text().replace(f'name: "{model}"', f'name: "{name}"')
        if model == "llama_semantic":  # a duplicate key would be refused by Triton before our code runs
            text = re.sub(r'parameters \{ key: "weight_quantization".*\n', "", text)
        changed = re.sub(pattern, lambda _, new=replacement: new, text, count=1)
        assert changed != text, f"{model}: the config no longer holds {pattern}"
        config.write_text(changed)
        names.append(name)
    server = TritonServer(
        root, log_file=root / "tritonserver.log", extra_args=["--model-control-mode=explicit"]
    )
    server.start(timeout_s=120)
    yield server, names
    server.stop()


@pytest.mark.parametrize("index", range(len(BROKEN)))
def test_a_config_that_cannot_serve_fails_its_load_with_the_reason(broken_repository, index):
    server, names = broken_repository
    client = grpcclient.InferenceServerClient(server.grpc_url)
    started = time.perf_counter()
    with pytest.raises(InferenceServerException, match=BROKEN[index][3]):
        client.load_model(names[index])
    assert not client.is_model_ready(names[index])
    assert time.perf_counter() - started < 60  # refused before any weights load (they take far less here)
