"""Codec speed on the CPU: real-time factors of PyTorch eager and onnxruntime, same machine, same run.

    .venv/bin/python -m bench.codec_speed [--seconds 10] [--threads 2] [--repeats 5] [--checkpoint-path GEN.pth]
        [--codec-config CODEC.json]

The architecture is the full firefly_gan_vq one, or --codec-config's. Without --checkpoint-path, a random
checkpoint of it is written to a temporary directory (speed does not depend on the weights). RTF = compute
time / audio duration (below 1: faster than real time). Rows: PyTorch float32, PyTorch bfloat16 autocast,
onnxruntime CPU float32, and the int8 decoder of `--codec-precision int8` (`export.codec_int8`, decoder
only); each the best of `--repeats` runs after one warm-up run (the best, not the median: on a shared
machine other processes only ever add time). Also printed: how many codes equal the float32 PyTorch codes,
and the decoded audio against PyTorch float32's: max |diff| and signal-to-noise ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from export.codec_int8 import snr_db
from export.codec_onnx import (
    DECODER_FILE,
    ENCODER_FILE,
    INT8_DECODER_FILE,
    export_decoder,
    export_encoder,
    export_int8_decoder,
    onnx_session,
)
from fish_speech_triton.audio import synthetic_speech
from fish_speech_triton.codec.checkpoint import load_codec, write_random_codec_checkpoint
from fish_speech_triton.codec.config import load_codec_config
from fish_speech_triton.hardware import cpu_has_native_bf16
from fish_speech_triton.tools.cli import int_range, positive_float, run_cli


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _best_seconds(run: Callable[[], object], repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.codec_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=positive_float, default=10.0, help="audio length (default 10 s)")
    parser.add_argument(
        "--threads", type=int_range(1), default=2, help="intra-op threads for both runtimes (default 2)"
    )
    parser.add_argument(
        "--repeats", type=int_range(1), default=5, help="timed runs per row, best kept (default 5)"
    )
    parser.add_argument(
        "--checkpoint-path", help="codec generator .pth (default: random weights of the architecture)"
    )
    parser.add_argument(
        "--codec-config",
        type=Path,
        help="codec architecture from a JSON file (as --decoder-config elsewhere; default: firefly_gan_vq)",
    )
    args = parser.parse_args(argv)

    start_load = os.getloadavg()[0]
    config = load_codec_config(path=args.codec_config)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = args.checkpoint_path or write_random_codec_checkpoint(work / "codec.pth", config)
        codec = load_codec(checkpoint, config)
        export_encoder(codec, work / ENCODER_FILE)
        export_decoder(codec, work / DECODER_FILE)
        export_int8_decoder(codec, work / DECODER_FILE, work / INT8_DECODER_FILE)
        encoder, decoder, int8_decoder = (
            onnx_session(work / ENCODER_FILE, args.threads),
            onnx_session(work / DECODER_FILE, args.threads),
            onnx_session(work / INT8_DECODER_FILE, args.threads),
        )

        audio = synthetic_speech(args.seconds, codec.sample_rate)[None, None]
        audio_t = torch.from_numpy(audio)
        with torch.inference_mode():
            codes_t = codec.encode(audio_t)[0]
        codes = codes_t.numpy().astype(np.int32)
        no_context = np.zeros(1, dtype=np.int64)

        def eager(call: Callable[[], torch.Tensor], bf16: bool) -> Callable[[], np.ndarray]:
            def run() -> np.ndarray:
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    return call().float().numpy()

            return run

        def encode_eager() -> torch.Tensor:
            return codec.encode(audio_t)[0]

        def decode_eager() -> torch.Tensor:
            return codec.decode(codes_t)

        rows = [
            ("PyTorch eager fp32", eager(encode_eager, False), eager(decode_eager, False)),
            ("PyTorch eager bf16 autocast", eager(encode_eager, True), eager(decode_eager, True)),
            (
                "onnxruntime CPU fp32",
                lambda: encoder.run(["codes"], {"audio": audio})[0],
                lambda: decoder.run(["audio"], {"codes": codes, "context_frames": no_context})[0],
            ),
            (
                "onnxruntime CPU int8 decoder",
                None,
                lambda: int8_decoder.run(["audio"], {"codes": codes, "context_frames": no_context})[0],
            ),
        ]
        reference = eager(decode_eager, False)()
        bf16 = cpu_has_native_bf16()
        print(
            f"codec real-time factors (compute time / audio time), {args.seconds:g} s of audio ({codes.shape[-1]} "
            f"frames), {args.threads} threads, best of {args.repeats}; torch {torch.__version__}, "
            f"onnxruntime {ort_version()}, CPU has native bf16: {bf16}"
        )
        print(
            f"{'runtime':<30} {'encode RTF':>10} {'codes = fp32':>12} {'decode RTF':>10} {'max |diff|':>10} "
            f"{'SNR dB':>7}"
        )
        for name, encode, decode in rows:
            if encode is None:  # a decoder-only row
                enc_text, codes_text = f"{'-':>10}", f"{'-':>12}"
            else:
                same_codes = float((encode().astype(np.int64) == codes).mean())
                enc_text = f"{_best_seconds(encode, args.repeats) / args.seconds:>10.3f}"
                codes_text = f"{same_codes:>12.2%}"
            audio_out = decode()
            diff = float(np.abs(audio_out - reference).max())
            snr = snr_db(reference, audio_out)
            dec = _best_seconds(decode, args.repeats) / args.seconds
            print(f"{name:<30} {enc_text} {codes_text} {dec:>10.3f} {diff:>10.1e} {snr:>7.1f}", flush=True)
        # Other processes on a shared machine slow both runtimes: the load average says how much to trust this.
        print(
            f"load average at start {start_load:.2f}, at end {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
