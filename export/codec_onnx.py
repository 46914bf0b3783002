"""Export the codec to two ONNX graphs for Triton's onnxruntime backend, and measure their parity with PyTorch.

    python -m export.codec_onnx --checkpoint-path GEN.pth --output-dir DIR [--opset 17] [--fp16 | --int8]

writes DIR/vqgan_encoder.onnx and DIR/vqgan_decoder.onnx (with --int8 also DIR/vqgan_decoder_int8.onnx):

* encoder: `audio` float32 [batch, 1, samples] (44.1 kHz, > 768 samples) -> `codes` int32 [batch, 8, frames],
  log-mel front end inside the graph. Every row is taken as `samples` long (no lengths input).
* decoder: `codes` int32 [batch, 8, frames], `context_frames` int64 [1] -> `audio` float32
  [batch, 1, (frames - context_frames) * 2048]: decodes all frames, returns the audio after the context.

Weight norm is folded (the codec is loaded that way), the graphs use standard ONNX ops only.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from fish_speech_triton.audio import synthetic_speech
from fish_speech_triton.codec.checkpoint import load_codec
from fish_speech_triton.codec.config import NAMED_CONFIGS, load_codec_config
from fish_speech_triton.codec.layers import with_polyphase_upsampling
from fish_speech_triton.codec.model import FireflyCodec
from fish_speech_triton.errors import FishSpeechError
from fish_speech_triton.serving.codec_runtime import CONTEXT_FRAMES, decode_in_windows
from fish_speech_triton.tools.cli import run_cli

DEFAULT_OPSET = 17
# Opsets the graphs export at: `aten::unflatten` needs 13; the TorchScript exporter stops at 20.
OPSETS = range(13, 21)
ENCODER_FILE = "vqgan_encoder.onnx"
DECODER_FILE = "vqgan_decoder.onnx"
INT8_DECODER_FILE = "vqgan_decoder_int8.onnx"
# Parity thresholds (fp32): codes may flip where a value sits on a rounding boundary, audio is float noise.
MAX_CODE_FLIP_RATE = 1e-3
MAX_AUDIO_DIFF = 1e-4
MAX_AUDIO_DIFF_FP16 = 2e-2


class EncoderGraph(nn.Module):
    """audio float32 [B, 1, T] -> codes int32 [B, n_groups, F]."""

    def __init__(self, codec: FireflyCodec) -> None:
        super().__init__()
        self.codec = codec

    def forward(self, audio: Tensor) -> Tensor:
        return self.codec.encode(audio)[0].to(torch.int32)


class DecoderGraph(nn.Module):
    """codes int32 [B, n_groups, F], context_frames int64 [1] -> audio float32 [B, 1, (F - context) * 2048]."""

    def __init__(self, codec: FireflyCodec) -> None:
        super().__init__()
        self.codec = codec

    def forward(self, codes: Tensor, context_frames: Tensor) -> Tensor:
        return self.codec.decode_window(codes.long(), context_frames).float()


def add_opset_argument(parser: argparse.ArgumentParser) -> None:
    """`--opset`, checked before any work (an opset the exporter lacks fails only after loading)."""
    parser.add_argument(
        "--opset",
        type=int,
        choices=OPSETS,
        metavar="OPSET",
        default=DEFAULT_OPSET,
        help=f"ONNX opset of the codec graphs, {OPSETS.start} to {OPSETS.stop - 1} (default {DEFAULT_OPSET})",
    )


def _export(
    graph: nn.Module, args: tuple[Tensor, ...], path: Path, names: dict[str, dict[int, str]], opset: int
) -> Path:
    """Trace `graph` and write it; `names` maps each input, then each output, to its dynamic axes."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs, outputs = list(names)[: len(args)], list(names)[len(args) :]
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is the one that needs no extra packages; its deprecation notice and the
        # tracer's notes on shape arithmetic (which we check with dynamic shapes in the tests) are noise here.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding")
        torch.onnx.export(
            graph.eval(),
            args,
            str(path),
            dynamo=False,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=names,
            opset_version=opset,
            do_constant_folding=True,
        )
    model = onnx.load(str(path))
    _drop_empty_trailing_inputs(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _drop_empty_trailing_inputs(model) -> None:  # model: onnx.ModelProto
    """Remove trailing empty ('') optional inputs, which mean the same as absent ones.

    The exporter writes every causal padding as `Pad(x, pads, '')`. onnxruntime fuses a Pad into the following
    Conv (its `pads` attribute) only when the Pad has no such empty input; fused, the decoder saves a copy of
    every activation it convolves (~10 % of its CPU time).
    """
    for node in model.graph.node:
        while node.input and not node.input[-1]:
            node.input.pop()


def export_encoder(codec: FireflyCodec, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Write the encoder graph (always float32: codes must match PyTorch's rounding)."""
    # Tracing sizes are arbitrary (every axis that varies is dynamic); small ones keep the export quick.
    audio = torch.from_numpy(synthetic_speech(0.5, codec.sample_rate))[None, None].to(_device(codec))
    names = {"audio": {0: "batch", 2: "samples"}, "codes": {0: "batch", 2: "frames"}}
    return _export(EncoderGraph(codec), (audio,), Path(path), names, opset)


def export_decoder(
    codec: FireflyCodec, path: str | Path, opset: int = DEFAULT_OPSET, fp16: bool = False
) -> Path:
    """Write the decoder graph; with `fp16`, weights and arithmetic in float16 (inputs and output keep their types).

    Its upsampling transposed convolutions are written as ordinary convolutions (`PolyphaseTransConv`: the
    same function), which onnxruntime runs faster and quantizes to int8 (it has no int8 ConvTranspose).
    """
    codec = with_polyphase_upsampling(codec)
    if fp16:
        codec = codec.half()
    device = _device(codec)
    codes = torch.randint(0, codec.codebook_size, (1, codec.num_groups, 6), dtype=torch.int32, device=device)
    context = torch.tensor([2], dtype=torch.int64, device=device)
    names = {
        "codes": {0: "batch", 2: "frames"},
        "context_frames": {},
        "audio": {0: "batch", 2: "samples"},
    }
    return _export(DecoderGraph(codec), (codes, context), Path(path), names, opset)


def export_int8_decoder(
    codec: FireflyCodec, float_path: str | Path, int8_path: str | Path, verify: bool = True
) -> Path:
    """Quantize the float decoder graph at `float_path` (from `export_decoder`) into an int8 one at `int8_path`
    (see `export.codec_int8`), calibrated on the codec's codes of synthetic speech.

    With `verify`, the int8 graph is checked against the float one on held-out codes (`verify_int8`).
    """
    from export.codec_int8 import quantize_decoder, speech_codes, verify_int8

    quantize_decoder(float_path, int8_path, speech_codes(codec))
    if verify:
        print(
            f"[codec] {verify_int8(float_path, int8_path, speech_codes(codec, 5.0, seed=1))}", file=sys.stderr
        )
    return Path(int8_path)


def _device(codec: FireflyCodec) -> torch.device:
    return next(codec.parameters()).device


@dataclass(frozen=True)
class ParityReport:
    """ONNX (onnxruntime, CPU) against PyTorch on the same inputs."""

    code_positions: int
    code_flips: int
    decoder_max_diff: float
    window_max_diff: float

    def __str__(self) -> str:
        return (
            f"encoder codes identical on {self.code_positions - self.code_flips}/{self.code_positions} positions "
            f"({self.code_flips} flips); decoder max |diff| {self.decoder_max_diff:.2e}; "
            f"windowed decode (16 frames context) vs one-shot max |diff| {self.window_max_diff:.2e}"
        )


def onnx_session(path: str | Path, threads: int = 2):  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def verify_parity(
    codec: FireflyCodec,
    encoder_path: str | Path,
    decoder_path: str | Path,
    *,
    seconds: float = 3.0,
    fp16_decoder: bool = False,
    threads: int = 2,
) -> ParityReport:
    """Run both graphs on `seconds` of synthetic speech and compare with `codec`; raise if out of tolerance.

    Tolerances: at most 0.1 % of code positions flipped; decoder (one-shot and windowed, 16 frames of context)
    within 1e-4 of PyTorch (2e-2 for a float16 decoder).
    """
    # The reference runs on the CPU in float32: on a GPU, PyTorch convolves in TF32 by default (~5e-4 off).
    reference = codec if _device(codec).type == "cpu" else copy.deepcopy(codec).cpu()
    audio = synthetic_speech(seconds, codec.sample_rate)[None, None]
    with torch.no_grad():
        expected_codes = reference.encode(torch.from_numpy(audio))[0].numpy().astype(np.int32)
        codes = onnx_session(encoder_path, threads).run(["codes"], {"audio": audio})[0]
        flips = (
            int((codes != expected_codes).sum())
            if codes.shape == expected_codes.shape
            else expected_codes.size
        )
        expected_audio = reference.decode(torch.from_numpy(expected_codes).long()).numpy()
    decoder = onnx_session(decoder_path, threads)
    one_shot = decoder.run(
        ["audio"], {"codes": expected_codes, "context_frames": np.zeros(1, dtype=np.int64)}
    )[0]
    windowed = decode_in_windows(decoder, expected_codes, step=24, context=CONTEXT_FRAMES)
    report = ParityReport(
        code_positions=expected_codes.size,
        code_flips=flips,
        decoder_max_diff=float(np.abs(one_shot - expected_audio).max()),
        window_max_diff=float(np.abs(windowed - expected_audio).max()),
    )
    audio_limit = MAX_AUDIO_DIFF_FP16 if fp16_decoder else MAX_AUDIO_DIFF
    if (
        flips > MAX_CODE_FLIP_RATE * report.code_positions
        or max(report.decoder_max_diff, report.window_max_diff) > audio_limit
    ):
        raise FishSpeechError(f"ONNX codec does not match PyTorch: {report}")
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m export.codec_onnx",
        description=(
            f"Export the Fish-Speech codec to {ENCODER_FILE} (audio -> codes) and {DECODER_FILE} (codes -> audio) "
            "for Triton's onnxruntime backend, then check them against PyTorch on 3 s of synthetic speech."
        ),
    )
    parser.add_argument(
        "--checkpoint-path",
        required=True,
        help="codec generator .pth, its directory, or a Hugging Face repo id",
    )
    config = parser.add_mutually_exclusive_group()
    config.add_argument("--config-name", default="firefly_gan_vq", choices=sorted(NAMED_CONFIGS))
    config.add_argument("--config", type=Path, help="codec config JSON file instead of a named config")
    parser.add_argument("--output-dir", type=Path, required=True, help="where to write the two .onnx files")
    add_opset_argument(parser)
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument(
        "--fp16",
        action="store_true",
        help="float16 decoder (for GPUs; the encoder stays float32 so codes match PyTorch's rounding)",
    )
    precision.add_argument(
        "--int8",
        action="store_true",
        help=f"also write {INT8_DECODER_FILE}, an int8 decoder for CPUs (~2x faster; changes the audio, "
        "~25 dB SNR against float: see docs/codec.md), calibrated on the codec's own codes of synthetic speech",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    codec = load_codec(args.checkpoint_path, load_codec_config(args.config_name, args.config))
    start = time.perf_counter()
    encoder = export_encoder(codec, args.output_dir / ENCODER_FILE, opset=args.opset)
    decoder = export_decoder(codec, args.output_dir / DECODER_FILE, opset=args.opset, fp16=args.fp16)
    print(f"exported {encoder} and {decoder} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print(f"parity: {verify_parity(codec, encoder, decoder, fp16_decoder=args.fp16)}")
    if args.int8:
        int8 = export_int8_decoder(codec, decoder, args.output_dir / INT8_DECODER_FILE)
        print(f"exported {int8}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
