"""Step 3 of the original's three steps, over Triton: codes -> 44.1 kHz audio (`vqgan_decoder`).

python -m client.decode -i codes_0.npy -o fake.wav
    reads int32 [8, frames] codes as `client.generate`, `client.encode` and the offline tools write them
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from client.triton_stream import add_url_argument, connect, infer
from fish_speech_triton.audio import CODEC_SAMPLE_RATE, save_wav, wav_output
from fish_speech_triton.codes_file import read_codes
from fish_speech_triton.tools.cli import run_cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.decode", description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", "--input", type=Path, required=True, help="codes .npy, int [8, frames]")
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("fake.wav"), help="wav file to write (default %(default)s)"
    )
    add_url_argument(parser)
    args = parser.parse_args(argv)
    wav_output(args.output)
    codes = read_codes(args.input)
    client = connect(args.url, "vqgan_decoder")
    started = time.perf_counter()
    audio = infer(client, "vqgan_decoder", {"CODES": codes}, ("AUDIO",), args.url)["AUDIO"]
    save_wav(args.output, audio, CODEC_SAMPLE_RATE)
    print(
        f"wrote {args.output}: {audio.size / CODEC_SAMPLE_RATE:.2f} s of audio from {codes.shape[1]} frames "
        f"in {time.perf_counter() - started:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
