"""Step 2 of the original's three steps, over Triton: text (+ one reference) -> semantic codes (`llama_semantic`).

python -m client.generate --text "Hello." --prompt-text "what ref.wav says" --prompt-tokens fake.npy
python -m client.generate --text "Hello." --reference-id alice --output-dir temp
    writes OUTPUT_DIR/codes_0.npy (int32 [8, frames]), the file `text2semantic` writes; decode it with
    `client.decode` or `tools.vqgan`
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from client.triton_stream import StreamResult, add_url_argument, collect, connect
from client.tts import add_sampling_arguments, sampling_inputs
from fish_speech_triton.audio import CODEC_SAMPLE_RATE
from fish_speech_triton.codes_file import check_codes_path, read_codes, write_codes
from fish_speech_triton.errors import InputError
from fish_speech_triton.tools.cli import run_cli

SAMPLES_PER_FRAME = 2048
OUTPUT_NAME = "codes_0.npy"


def prompt_inputs(args: argparse.Namespace) -> dict[str, object]:
    """The reference of the request: one (--prompt-text, --prompt-tokens) pair, or a stored --reference-id."""
    texts, tokens = args.prompt_text or [], args.prompt_tokens or []
    if len(texts) != len(tokens):
        raise InputError(
            f"--prompt-text and --prompt-tokens go in pairs, got {len(texts)} text(s) and {len(tokens)} file(s)"
        )
    if len(tokens) > 1:
        raise InputError(
            f"llama_semantic takes one reference per request, got {len(tokens)}; "
            "for a voice with several samples store them under one id (client.references) and use --reference-id"
        )
    if tokens and args.reference_id is not None:
        raise InputError("give either --prompt-text/--prompt-tokens or --reference-id, not both")
    if tokens:
        return {"REFERENCE_CODES": read_codes(tokens[0]), "REFERENCE_TEXT": texts[0]}
    return {} if args.reference_id is None else {"REFERENCE_ID": args.reference_id}


def codes_of(result: StreamResult) -> np.ndarray:
    """The new frames of every chunk, in order: each chunk starts with CONTEXT_FRAMES already-sent frames."""
    parts = [chunk["CODES"][:, int(chunk["CONTEXT_FRAMES"][0]) :] for chunk in result.chunks]
    return np.concatenate(parts, axis=1) if parts else np.zeros((8, 0), dtype=np.int32)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", required=True, help="what to say")
    parser.add_argument(
        "--prompt-text", action="append", help="transcript of the reference (with --prompt-tokens)"
    )
    parser.add_argument(
        "--prompt-tokens",
        action="append",
        type=Path,
        help="reference codes .npy (from client.encode / tools.vqgan)",
    )
    parser.add_argument("--reference-id", help="a voice stored on the server (references/<id>/)")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("temp"),
        help=f"where {OUTPUT_NAME} goes (default %(default)s)",
    )
    add_sampling_arguments(parser)
    add_url_argument(parser)
    args = parser.parse_args(argv)
    if not args.text.strip():
        raise InputError("--text is empty")
    check_codes_path(args.output_dir / OUTPUT_NAME, "--output-dir")

    inputs = {"TEXT": args.text, **prompt_inputs(args), **sampling_inputs(args)}
    client = connect(args.url, "llama_semantic")
    result = collect(client, "llama_semantic", inputs, ("CODES", "CONTEXT_FRAMES"))
    codes = codes_of(result)
    if codes.shape[1] == 0:
        raise InputError("the model generated no frames (it ended at once); try another --seed")
    path = write_codes(args.output_dir / OUTPUT_NAME, codes)
    first = result.time_to_first_chunk
    print(
        f"wrote {path}: codes {list(codes.shape)} ({codes.shape[1] * SAMPLES_PER_FRAME / CODEC_SAMPLE_RATE:.2f} s "
        f"of audio) in {result.elapsed:.2f} s, first codes after {first if first is not None else float('nan'):.3f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
