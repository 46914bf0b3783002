"""ONNX codec graphs (onnxruntime, CPU) against the PyTorch codec, on the small and the full-size architecture."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.codec_onnx import (
    DECODER_FILE,
    ENCODER_FILE,
    export_decoder,
    onnx_session,
    verify_parity,
)
from fish_speech_triton.audio import synthetic_speech
from fish_speech_triton.codec.checkpoint import load_codec, write_random_codec_checkpoint
from fish_speech_triton.codec.model import FireflyCodec
from fish_speech_triton.errors import FishSpeechError
from fish_speech_triton.serving import codec_runtime
from fish_speech_triton.serving.codec_runtime import OnnxDecoder, OnnxEncoder, decode_in_windows

pytestmark = pytest.mark.usefixtures("codec_single_thread")

SIZES = ["small", "full"]


@pytest.fixture(scope="module", params=SIZES)
def codec_case(request: pytest.FixtureRequest) -> tuple[FireflyCodec, Path]:
    """(PyTorch codec, directory of its exported graphs), for each architecture size."""
    return request.getfixturevalue(f"codec_{request.param}"), request.getfixturevalue(
        f"codec_{request.param}_onnx"
    )


@pytest.fixture(scope="module")
def codec_sessions(codec_case):
    codec, directory = codec_case
    return (
        codec,
        onnx_session(directory / ENCODER_FILE, threads=1),
        onnx_session(directory / DECODER_FILE, threads=1),
    )


def _torch_codes(codec: FireflyCodec, audio: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return codec.encode(torch.from_numpy(audio))[0].numpy().astype(np.int32)


def _torch_audio(codec: FireflyCodec, codes: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return codec.decode(torch.from_numpy(codes).long()).numpy()


def _io(path: Path) -> dict[str, tuple[int, list[str | int]]]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return {
        v.name: (
            v.type.tensor_type.elem_type,
            [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
        )
        for v in [*graph.input, *graph.output]
    }


def test_graph_contract_and_standard_ops(codec_case) -> None:
    _, directory = codec_case
    assert _io(directory / ENCODER_FILE) == {
        "audio": (onnx.TensorProto.FLOAT, ["batch", 1, "samples"]),
        "codes": (onnx.TensorProto.INT32, ["batch", 8, "frames"]),
    }
    assert _io(directory / DECODER_FILE) == {
        "codes": (onnx.TensorProto.INT32, ["batch", 8, "frames"]),
        "context_frames": (onnx.TensorProto.INT64, [1]),
        "audio": (onnx.TensorProto.FLOAT, ["batch", 1, "samples"]),
    }
    for name in (ENCODER_FILE, DECODER_FILE):
        model = onnx.load(str(directory / name))
        assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}, (
            "custom ops would not run on every provider"
        )
        assert not [i.name for i in model.graph.initializer if "weight_g" in i.name or "original0" in i.name]
        # no empty optional inputs: onnxruntime only folds a Pad without one into the following Conv
        assert not [n.name for n in model.graph.node if "" in n.input]


def test_encoder_and_decoder_match_pytorch(codec_sessions) -> None:
    codec, encoder, decoder = codec_sessions
    audio = synthetic_speech(3.0)[None, None]
    expected = _torch_codes(codec, audio)
    codes = encoder.run(["codes"], {"audio": audio})[0]
    assert codes.dtype == np.int32 and codes.shape == expected.shape == (1, 8, 65)
    flips = int((codes != expected).sum())
    print(f"encoder: {flips} of {codes.size} codes differ from PyTorch")
    assert flips <= 1e-3 * codes.size
    wave = decoder.run(["audio"], {"codes": expected, "context_frames": np.zeros(1, np.int64)})[0]
    diff = np.abs(wave - _torch_audio(codec, expected)).max()
    print(f"decoder: max |ONNX - PyTorch| = {diff:.2e}")
    assert wave.shape == (1, 1, 65 * 2048) and diff <= 1e-4


def test_windowed_decode_of_ten_seconds_equals_one_shot(codec_sessions) -> None:
    _, _, decoder = codec_sessions
    codes = np.random.default_rng(0).integers(0, 1000, (1, 8, 216), dtype=np.int32)  # ~10 s
    one_shot = decoder.run(["audio"], {"codes": codes, "context_frames": np.zeros(1, np.int64)})[0]
    windowed = decode_in_windows(decoder, codes, step=72, context=16)
    assert windowed.shape == one_shot.shape == (1, 1, 216 * 2048)
    assert np.abs(windowed - one_shot).max() <= 1e-4


def test_decoder_batch_of_different_lengths(codec_sessions) -> None:
    """Right-padded rows: each row's valid audio equals decoding it alone (the decoder is causal)."""
    _, _, decoder = codec_sessions
    rng = np.random.default_rng(1)
    long, short = (
        rng.integers(0, 1000, (8, 24), dtype=np.int32),
        rng.integers(0, 1000, (8, 13), dtype=np.int32),
    )
    batch = np.zeros((2, 8, 24), np.int32)
    batch[0], batch[1, :, :13] = long, short
    context = np.array([3], np.int64)
    both = decoder.run(["audio"], {"codes": batch, "context_frames": context})[0]
    assert both.shape == (2, 1, 21 * 2048)
    alone = [decoder.run(["audio"], {"codes": c[None], "context_frames": context})[0] for c in (long, short)]
    np.testing.assert_allclose(both[:1], alone[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(both[1:, :, : 10 * 2048], alone[1], rtol=0, atol=1e-5)


def test_encoder_batch_rows_are_independent_and_full_length(codec_sessions) -> None:
    """The graph has no lengths input: every row is encoded as `samples` long. A right-padded short row gives
    the codes of its padded signal, which equal its own codes except the last one or two frames."""
    codec, encoder, _ = codec_sessions
    long, short = synthetic_speech(2.0, seed=1), synthetic_speech(1.3, seed=2)
    batch = np.zeros((2, 1, long.size), np.float32)
    batch[0, 0], batch[1, 0, : short.size] = long, short
    codes = encoder.run(["codes"], {"audio": batch})[0]
    alone = [encoder.run(["codes"], {"audio": row[None]})[0] for row in batch]
    np.testing.assert_array_equal(codes, np.concatenate(alone))
    own = encoder.run(["codes"], {"audio": short[None, None]})[0]
    kept = own.shape[-1] - 2
    np.testing.assert_array_equal(codes[1, :, :kept], own[0, :, :kept])
    for samples in (769, 2048, 5000, 44100 + 1):  # dynamic lengths, frame count as in PyTorch
        audio = synthetic_speech(samples / 44100)[None, None]
        assert encoder.run(["codes"], {"audio": audio})[0].shape == (1, 8, codec.num_frames(samples))


def test_fp16_decoder_small(tmp_path: Path, codec_small: FireflyCodec, codec_small_onnx: Path) -> None:
    path = export_decoder(codec_small, tmp_path / DECODER_FILE, fp16=True)
    assert _io(path)["codes"][0] == onnx.TensorProto.INT32 and _io(path)["audio"][0] == onnx.TensorProto.FLOAT
    assert {i.data_type for i in onnx.load(str(path)).graph.initializer if len(i.dims) > 1} == {
        onnx.TensorProto.FLOAT16
    }
    report = verify_parity(codec_small, codec_small_onnx / ENCODER_FILE, path, fp16_decoder=True, threads=1)
    assert report.decoder_max_diff <= 2e-2


def test_verify_parity_reports_and_refuses(
    tmp_path: Path, codec_small, codec_small_onnx, codec_small_config
) -> None:
    report = verify_parity(
        codec_small, codec_small_onnx / ENCODER_FILE, codec_small_onnx / DECODER_FILE, threads=1
    )
    assert report.code_flips == 0 and report.decoder_max_diff <= 1e-4 and "flips" in str(report)
    other = load_codec(
        write_random_codec_checkpoint(tmp_path / "o.pth", codec_small_config, seed=7), codec_small_config
    )
    with pytest.raises(FishSpeechError, match="does not match PyTorch"):
        verify_parity(other, codec_small_onnx / ENCODER_FILE, codec_small_onnx / DECODER_FILE, threads=1)


def test_command_line(tmp_path: Path, codec_small_checkpoint: Path, codec_small_config_file: Path) -> None:
    command = [sys.executable, "-m", "export.codec_onnx", "--checkpoint-path", str(codec_small_checkpoint)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*command, "--config", str(codec_small_config_file), "--output-dir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / ENCODER_FILE).is_file() and (tmp_path / "out" / DECODER_FILE).is_file()
    assert done.stdout.startswith("parity: encoder codes identical on 520/520")
    assert "Warning" not in done.stderr
    done = subprocess.run(
        [*command, "--output-dir", str(tmp_path / "bad")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: codec checkpoint")


class CountingSession:
    """An onnxruntime session that counts its runs."""

    def __init__(self, session) -> None:
        self.session, self.runs = session, 0

    def run(self, *args, **kwargs):
        self.runs += 1
        return self.session.run(*args, **kwargs)


def test_encoder_keeps_the_codes_of_its_latest_recordings_never_a_refusal(codec_small_onnx: Path) -> None:
    encoder = OnnxEncoder(codec_small_onnx / ENCODER_FILE, threads=1, cache_entries=2)
    encoder.session = counting = CountingSession(encoder.session)
    first, second, third = (synthetic_speech(0.5, 44100, seed=seed) for seed in (1, 2, 3))
    codes = encoder.encode(first)
    again = encoder.encode(first.copy())  # the same samples: no second run
    np.testing.assert_array_equal(again, codes)
    assert counting.runs == 1
    again[0, 0] += 1  # the caller's copy
    np.testing.assert_array_equal(encoder.encode(first), codes)
    encoder.encode(first, sample_rate=22050)  # another rate is another recording
    assert counting.runs == 2
    encoder.encode(second)
    encoder.encode(third)  # two entries: the oldest goes
    assert counting.runs == 4
    encoder.encode(third)
    encoder.encode(first)
    assert counting.runs == 5
    for _ in range(2):  # a refusal is never kept
        with pytest.raises(FishSpeechError, match="too short"):
            encoder.encode(first[:100])
    uncached = OnnxEncoder(codec_small_onnx / ENCODER_FILE, threads=1, cache_entries=0)
    uncached.session = counting = CountingSession(uncached.session)
    np.testing.assert_array_equal(uncached.encode(first), codes)
    uncached.encode(first)
    assert counting.runs == 2
    with pytest.raises(FishSpeechError, match="cache_entries"):
        OnnxEncoder(codec_small_onnx / ENCODER_FILE, cache_entries=-1)


def test_long_decodes_run_in_windows_and_equal_one_shot(codec_small_onnx: Path, monkeypatch) -> None:
    decoder = OnnxDecoder(codec_small_onnx / DECODER_FILE, threads=1)
    codes = np.random.default_rng(1).integers(0, 1000, (8, 80), dtype=np.int32)
    one_shot = decoder.decode(codes, context_frames=5)  # 80 frames: one run of the default window
    runs = CountingSession(decoder.session)
    decoder.session = runs
    monkeypatch.setattr(codec_runtime, "WINDOW_FRAMES", 20)
    windowed = decoder.decode(codes, context_frames=5)
    assert runs.runs == 4 and windowed.shape == one_shot.shape == (75 * 2048,)
    assert np.abs(windowed - one_shot).max() <= 1e-4
    limit = codec_runtime.MIN_DECODE_FRAMES
    capped = OnnxDecoder(codec_small_onnx / DECODER_FILE, threads=1, max_frames=limit)
    with pytest.raises(FishSpeechError, match=f"{limit + 1} frames .* at most {limit} .*max_frames"):
        capped.decode(np.zeros((8, limit + 1), np.int32))
    # below one stream chunk with its context, every long stream would fail partway: refused at load
    with pytest.raises(FishSpeechError, match=f"max_frames must be at least {limit}"):
        OnnxDecoder(codec_small_onnx / DECODER_FILE, max_frames=limit - 1)


def test_encoder_refuses_audio_on_another_scale_and_checks_before_its_cache(codec_small_onnx: Path) -> None:
    encoder = OnnxEncoder(codec_small_onnx / ENCODER_FILE, threads=1, cache_entries=4)
    speech = synthetic_speech(0.5, 44100, seed=1)
    with pytest.raises(FishSpeechError, match="peaks at .*divide them by 32768"):
        encoder.encode(speech * 32767)
    encoder.encode(speech)  # cached now; the same samples at an unsupported rate are still refused
    with pytest.raises(FishSpeechError, match="unsupported sample rate 10 Hz"):
        encoder.encode(speech, sample_rate=10)


def test_a_gpu_codec_device_without_a_gpu_onnxruntime_is_refused(codec_small_onnx: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(FishSpeechError, match="needs onnxruntime's CUDAExecutionProvider.*onnxruntime-gpu"):
        OnnxDecoder(codec_small_onnx / DECODER_FILE, device="cuda:0")


@pytest.mark.parametrize("device", ["cuda:0", "tensorrt"])
def test_a_gpu_provider_that_cannot_load_is_refused_not_left_to_fall_back(
    codec_small_onnx: Path, device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU onnxruntime whose provider fails to load (say, a missing cuDNN) falls back to the CPU with only
    a warning; here a CPU onnxruntime that claims the GPU providers stands in for it."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    claimed = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: claimed)
    wanted = "TensorrtExecutionProvider" if device == "tensorrt" else "CUDAExecutionProvider"
    with pytest.raises(FishSpeechError, match=f"could not load its {wanted} .*run on CPUExecutionProvider"):
        OnnxDecoder(codec_small_onnx / DECODER_FILE, device=device)
