"""Step 1 of the original's three steps, over Triton: reference audio -> prompt codes (`vqgan_encoder`).

python -m client.encode -i ref.wav -o fake.npy
    writes int32 [8, frames] codes, the file `tools.vqgan` writes; `client.generate --prompt-tokens` reads it
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from client.triton_stream import add_url_argument, connect, infer
from fish_speech_triton.audio import CODEC_SAMPLE_RATE, load_audio
from fish_speech_triton.codes_file import check_codes_path, write_codes
from fish_speech_triton.tools.cli import run_cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.encode", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-i", "--input", type=Path, required=True, help="audio file (any rate, mixed to mono)"
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("fake.npy"),
        help="codes .npy to write (default %(default)s)",
    )
    add_url_argument(parser)
    args = parser.parse_args(argv)
    check_codes_path(args.output)
    # Resampled here exactly as the offline tool does, so both give the same codes for the same file.
    audio = load_audio(args.input, CODEC_SAMPLE_RATE)
    client = connect(args.url, "vqgan_encoder")
    started = time.perf_counter()
    inputs = {"AUDIO": audio, "SAMPLE_RATE": np.array([CODEC_SAMPLE_RATE], dtype=np.int32)}
    codes = infer(client, "vqgan_encoder", inputs, ("CODES",), args.url)["CODES"]
    write_codes(args.output, codes)
    print(
        f"wrote {args.output}: codes {list(codes.shape)} from {audio.size / CODEC_SAMPLE_RATE:.2f} s of audio "
        f"in {time.perf_counter() - started:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
