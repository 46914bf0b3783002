"""The int8 codec decoder (`--codec-precision int8`): its graph, its accuracy checks and its command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from export.codec_int8 import (
    MIN_SNR_DB,
    fuse_silu,
    quantize_decoder,
    snr_db,
    speech_codes,
    verify_int8,
)
from export.codec_onnx import (
    DECODER_FILE,
    ENCODER_FILE,
    INT8_DECODER_FILE,
    export_decoder,
    export_int8_decoder,
    onnx_session,
)
from fish_speech_triton.codec.checkpoint import load_codec, write_random_codec_checkpoint
from fish_speech_triton.errors import FishSpeechError, InputError
from fish_speech_triton.serving.codec_runtime import OnnxDecoder, decode_in_windows

pytestmark = pytest.mark.usefixtures("codec_single_thread")


@pytest.fixture(scope="module")
def int8_small(tmp_path_factory, codec_small, codec_small_onnx) -> Path:
    path = tmp_path_factory.mktemp("int8") / INT8_DECODER_FILE
    return export_int8_decoder(codec_small, codec_small_onnx / DECODER_FILE, path)


def _ops(path: Path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path)).graph.node]


def test_int8_graph_keeps_the_contract_and_quantizes_every_convolution(int8_small, codec_small_onnx):
    float_graph = onnx.load(str(codec_small_onnx / DECODER_FILE)).graph
    int8_graph = onnx.load(str(int8_small)).graph
    assert [(v.name, v.type) for v in int8_graph.input] == [(v.name, v.type) for v in float_graph.input]
    assert [(v.name, v.type) for v in int8_graph.output] == [(v.name, v.type) for v in float_graph.output]
    ops = _ops(int8_small)
    convolutions = sum(op in ("Conv", "ConvTranspose") for op in ops)
    assert convolutions == sum(node.op_type in ("Conv", "ConvTranspose") for node in float_graph.node)
    # Each convolution reads a dequantized activation and a dequantized int8 weight.
    assert ops.count("DequantizeLinear") >= 2 * convolutions
    int8_weights = [
        i for i in int8_graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) > 1
    ]
    assert len(int8_weights) == convolutions
    # Standard ops, but each SiLU (x * sigmoid(x)) as one onnxruntime QuickGelu (`fuse_silu`)
    silus = sum(node.op_type == "Sigmoid" for node in float_graph.node)
    assert silus > 0 and "Sigmoid" not in ops and ops.count("QuickGelu") == silus
    assert {node.domain for node in int8_graph.node} <= {"", "ai.onnx", "com.microsoft"}


def test_fuse_silu_replaces_only_a_sigmoid_that_gates_its_own_input():
    def tensor(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 3])

    nodes = [
        helper.make_node("Sigmoid", ["x"], ["sx"]),
        helper.make_node("Mul", ["sx", "x"], ["silu"]),  # operands either way round
        helper.make_node("Sigmoid", ["y"], ["sy"]),
        helper.make_node("Mul", ["y", "sy"], ["gated"]),
        helper.make_node("Add", ["gated", "sy"], ["kept"]),  # sy is read twice: not fused
        helper.make_node("Sigmoid", ["x"], ["sx2"]),
        helper.make_node("Mul", ["y", "sx2"], ["other"]),  # gates another tensor: not a SiLU
    ]
    outputs = [tensor(name) for name in ("silu", "kept", "other")]
    graph = helper.make_graph(nodes, "g", [tensor("x"), tensor("y")], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"x": np.linspace(-4, 4, 6, dtype=np.float32).reshape(2, 3), "y": np.ones((2, 3), np.float32)}

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, feeds
        )

    expected = run(model)
    assert fuse_silu(model) == 1
    assert [n.op_type for n in model.graph.node].count("QuickGelu") == 1
    assert [n.op_type for n in model.graph.node].count("Sigmoid") == 2
    for got, want in zip(run(model), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_int8_audio_is_close_to_float_and_streams_exactly(int8_small, codec_small, codec_small_onnx):
    codes = speech_codes(codec_small, seconds=4.0, seed=3)[None]
    feeds = {"codes": codes, "context_frames": np.zeros(1, dtype=np.int64)}
    expected = onnx_session(codec_small_onnx / DECODER_FILE, threads=1).run(["audio"], feeds)[0]
    session = onnx_session(int8_small, threads=1)
    one_shot = session.run(["audio"], feeds)[0]
    assert one_shot.shape == expected.shape
    assert MIN_SNR_DB <= snr_db(expected, one_shot) < 60  # close, and really quantized
    # Static scales: a window's samples are computed exactly as in the one-shot decode.
    np.testing.assert_array_equal(decode_in_windows(session, codes, step=24, context=16), one_shot)


def test_verify_int8_reports_and_refuses(
    tmp_path, int8_small, codec_small, codec_small_onnx, codec_small_config
):
    codes = speech_codes(codec_small, seconds=3.0, seed=1)
    report = verify_int8(codec_small_onnx / DECODER_FILE, int8_small, codes)
    assert report.snr_db >= MIN_SNR_DB and report.window_max_diff == 0 and "SNR" in str(report)
    other = load_codec(
        write_random_codec_checkpoint(tmp_path / "o.pth", codec_small_config, seed=7), codec_small_config
    )
    other_float = export_decoder(other, tmp_path / "other" / DECODER_FILE)
    quantize_decoder(other_float, tmp_path / "other_int8.onnx", speech_codes(other))
    with pytest.raises(FishSpeechError, match="int8 codec decoder is out of tolerance"):
        verify_int8(codec_small_onnx / DECODER_FILE, tmp_path / "other_int8.onnx", codes)
    with pytest.raises(FishSpeechError, match="at least 40 frames"):
        quantize_decoder(other_float, tmp_path / "short.onnx", codes[:, :20])


def test_command_line_int8(tmp_path, codec_small_checkpoint, codec_small_config_file):
    command = [
        sys.executable,
        "-m",
        "export.codec_onnx",
        "--checkpoint-path",
        str(codec_small_checkpoint),
        "--config",
        str(codec_small_config_file),
        "--output-dir",
        str(tmp_path / "out"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*command, "--int8"], capture_output=True, text=True, timeout=300, check=False, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "int8 decoder vs float" in done.stderr and "Warning" not in done.stderr
    assert done.stdout.startswith("parity: encoder codes identical")  # the float graphs, checked as ever
    assert "DequantizeLinear" in _ops(tmp_path / "out" / INT8_DECODER_FILE)
    assert "DequantizeLinear" not in _ops(tmp_path / "out" / DECODER_FILE)
    assert (tmp_path / "out" / ENCODER_FILE).is_file()
    done = subprocess.run(
        [*command, "--int8", "--fp16"], capture_output=True, text=True, timeout=60, check=False, env=env
    )
    assert done.returncode == 2 and "not allowed with argument" in done.stderr


def test_a_missing_graph_is_named_with_what_the_folder_has(codec_small_onnx):
    with pytest.raises(
        InputError, match=r"no codec graph .*vqgan_decoder_int8\.onnx.*has: vqgan_decoder\.onnx"
    ):
        OnnxDecoder(codec_small_onnx / INT8_DECODER_FILE)
