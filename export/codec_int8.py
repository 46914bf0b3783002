"""An int8 codec decoder for CPUs (an optional speed lever, off by default).

The decoder's time is ~90 % convolutions (the HiFi-GAN generator at up to 44.1 kHz). Quantized statically
to int8 (weights per output channel, activations per tensor with scales calibrated once at export), they
run on onnxruntime's int8 kernels (AVX512-VNNI / AVX-VNNI), 2.0-2.4x faster than float32 on the project's CPU.
The graph is a QDQ graph (QuantizeLinear / DequantizeLinear around each Conv, the upsampling ones included;
each SiLU one onnxruntime QuickGelu node), with the float decoder's inputs and outputs, so the serving code
runs it unchanged.

It changes the audio: activations are rounded to 256 levels per tensor, a fixed noise floor that is
loudest relative to quiet passages. `verify_int8` measures the signal-to-noise ratio against the float
decoder and refuses a graph below `MIN_SNR_DB` (a broken calibration), and checks that streaming decode
with left context still equals the one-shot decode.

Calibration decodes codes of the codec's own encoding of synthetic speech, in windows, so the activation
ranges are those of the checkpoint being exported.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from fish_speech_triton.audio import synthetic_speech
from fish_speech_triton.codec.model import FireflyCodec
from fish_speech_triton.errors import FishSpeechError
from fish_speech_triton.serving.codec_runtime import CONTEXT_FRAMES, decode_in_windows

CALIBRATION_SECONDS = 8.0
CALIBRATION_WINDOW_FRAMES = 40
# Far below what calibrated graphs give (~25 dB on random full-size weights): below it, quantization failed.
MIN_SNR_DB = 18.0
# Windowed decode of the int8 graph against its one-shot decode (the float graph's is bit-identical).
MAX_WINDOW_DIFF = 1e-4


def speech_codes(codec: FireflyCodec, seconds: float = CALIBRATION_SECONDS, seed: int = 0) -> np.ndarray:
    """int32 `[8, F]`: the codec's codes for `seconds` of synthetic speech (`seed`: its noise)."""
    device = next(codec.parameters()).device
    audio = torch.from_numpy(synthetic_speech(seconds, codec.sample_rate, seed))[None, None].to(device)
    with torch.no_grad():
        return codec.encode(audio)[0][0].cpu().numpy().astype(np.int32)


def _windows(codes: np.ndarray, frames: int) -> Iterator[dict[str, np.ndarray]]:
    for start in range(0, codes.shape[-1] - frames + 1, frames):
        yield {
            "codes": np.ascontiguousarray(codes[None, :, start : start + frames]),
            "context_frames": np.zeros(1, dtype=np.int64),
        }


def fuse_silu(model: onnx.ModelProto) -> int:
    """Replace each `Mul(x, Sigmoid(x))` of `model` (in place) by one `com.microsoft.QuickGelu(x, alpha=1)`,
    the same SiLU; returns how many.

    In a QDQ graph `x` is a DequantizeLinear output with two consumers, which onnxruntime splits into two
    DequantizeLinear nodes, one each, and then cannot fuse the SiLU: four passes over the activation
    instead of two. One node consumes `x` once.
    """
    graph = model.graph
    producer = {output: i for i, node in enumerate(graph.node) for output in node.output}  # -> node index
    consumers = Counter(name for node in graph.node for name in node.input)
    fused: dict[int, onnx.NodeProto] = {}  # index of the Mul -> its replacement
    dropped: set[int] = set()  # indices of the Sigmoids folded into them
    for i, node in enumerate(graph.node):
        if node.op_type != "Mul" or node.domain not in ("", "ai.onnx"):
            continue
        for x, gate in (node.input, node.input[::-1]):
            sigmoid = producer.get(gate)
            if (
                sigmoid is not None
                and graph.node[sigmoid].op_type == "Sigmoid"
                and graph.node[sigmoid].input[0] == x
                and consumers[gate] == 1
            ):
                fused[i] = onnx.helper.make_node(
                    "QuickGelu",
                    [x],
                    list(node.output),
                    name=f"{node.name}_silu",
                    domain="com.microsoft",
                    alpha=1.0,
                )
                dropped.add(sigmoid)
                break
    nodes = [fused.get(i, node) for i, node in enumerate(graph.node) if i not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)
    if fused and not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return len(fused)


def quantize_decoder(float_path: str | Path, int8_path: str | Path, codes: np.ndarray) -> Path:
    """Write the int8 version of the float decoder graph at `float_path`, calibrated on `codes [8, F]`."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if codes.shape[-1] < CALIBRATION_WINDOW_FRAMES:
        raise FishSpeechError(
            f"int8 calibration needs at least {CALIBRATION_WINDOW_FRAMES} frames of codes, got {codes.shape[-1]}"
        )

    class Windows(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = _windows(codes, CALIBRATION_WINDOW_FRAMES)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    int8_path = Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "decoder_prepared.onnx"
        # Shape inference and graph clean-up first, as onnxruntime's quantizer recommends.
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(prepared)
        fuse_silu(model)
        onnx.save(model, prepared)
        quantize_static(
            str(prepared),
            str(int8_path),
            Windows(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv", "ConvTranspose"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return int8_path


@dataclass(frozen=True)
class Int8Report:
    """The int8 decoder against the float decoder (both onnxruntime, CPU) on the same codes."""

    frames: int
    snr_db: float
    max_diff: float
    window_max_diff: float

    def __str__(self) -> str:
        return (
            f"int8 decoder vs float on {self.frames} frames: SNR {self.snr_db:.1f} dB, max |diff| "
            f"{self.max_diff:.2e}; windowed decode (16 frames context) vs one-shot max |diff| "
            f"{self.window_max_diff:.2e}"
        )


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    noise = float(np.square(reference - other, dtype=np.float64).sum())
    signal = float(np.square(reference, dtype=np.float64).sum())
    return float("inf") if noise == 0 else 10 * np.log10(max(signal, 1e-30) / noise)


def verify_int8(float_path: str | Path, int8_path: str | Path, codes: np.ndarray) -> Int8Report:
    """Decode `codes [8, F]` with both graphs; raise below `MIN_SNR_DB` or when windowed decode drifts."""
    from export.codec_onnx import onnx_session

    feeds = {"codes": codes[None], "context_frames": np.zeros(1, dtype=np.int64)}
    expected = onnx_session(float_path).run(["audio"], feeds)[0]
    int8 = onnx_session(int8_path)
    one_shot = int8.run(["audio"], feeds)[0]
    windowed = decode_in_windows(int8, codes[None], step=24, context=CONTEXT_FRAMES)
    report = Int8Report(
        frames=codes.shape[-1],
        snr_db=snr_db(expected, one_shot),
        max_diff=float(np.abs(expected - one_shot).max()),
        window_max_diff=float(np.abs(windowed - one_shot).max()),
    )
    if report.snr_db < MIN_SNR_DB or report.window_max_diff > MAX_WINDOW_DIFF:
        raise FishSpeechError(
            f"the int8 codec decoder is out of tolerance (SNR >= {MIN_SNR_DB} dB): {report}"
        )
    return report
