"""Text (+ optional reference transcripts and codes) to semantic codes, like the original
`fish_speech/models/text2semantic/inference.py`.

    python -m fish_speech_triton.tools.text2semantic --text "Hello." \\
        --prompt-text "Transcript of the reference." --prompt-tokens fake.npy \\
        --checkpoint-path checkpoints/fish-speech-1.5

writes codes_0.npy, codes_1.npy, ... (int32 [8, frames], one per sample) into --output-dir; decode them with
`python -m fish_speech_triton.tools.vqgan -i codes_0.npy -o out.wav`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fish_speech_triton.audio import check_writable
from fish_speech_triton.codes_file import load_npy
from fish_speech_triton.errors import InputError
from fish_speech_triton.hardware import torch_device
from fish_speech_triton.hub import resolve_checkpoint
from fish_speech_triton.lm.checkpoint import CONFIG_FILE, load_lm
from fish_speech_triton.lm.config import DualARConfig
from fish_speech_triton.lm.generation import Generation, SamplingParams
from fish_speech_triton.lm.levers import add_lever_arguments, levers_from_args
from fish_speech_triton.lm.long_form import generate_long, text_segments
from fish_speech_triton.lm.prompt import Reference
from fish_speech_triton.tools.cli import int_type, run_cli

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fish_speech_triton.tools.text2semantic",
        description="Generate Fish-Speech 1.5 semantic codes for a text, optionally in the voice of references.",
        epilog="Writes OUTPUT_DIR/codes_N.npy (int32 [8, frames]) for each sample N; decode them with "
        "python -m fish_speech_triton.tools.vqgan -i OUTPUT_DIR/codes_0.npy.",
    )
    int32, int64 = int_type(32), int_type(64)
    parser.add_argument("--text", required=True, help="the text to speak")
    parser.add_argument(
        "--prompt-text", action="append", default=[], help="transcript of a reference (repeat for several)"
    )
    parser.add_argument(
        "--prompt-tokens",
        action="append",
        default=[],
        type=Path,
        help="codes of that reference: .npy int [8, frames] from tools.vqgan (one per --prompt-text, same order)",
    )
    parser.add_argument(
        "--checkpoint-path",
        default="checkpoints/fish-speech-1.5",
        help="LM checkpoint directory, or a Hugging Face repo id such as fishaudio/fish-speech-1.5 "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--num-samples",
        type=int32,
        default=1,
        help="generations of the text, each its own file (default %(default)s)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int32,
        default=0,
        help="frames per segment at most (0: up to the model's length)",
    )
    parser.add_argument(
        "--top-p", type=float, default=0.7, help="nucleus sampling mass, 0 < p <= 1 (default %(default)s)"
    )
    parser.add_argument(
        "--repetition-penalty", type=float, default=1.2, help="0 < r < 2 (default %(default)s)"
    )
    parser.add_argument("--temperature", type=float, default=0.7, help="0 < t < 2 (default %(default)s)")
    parser.add_argument(
        "--seed",
        type=int64,
        default=42,
        help="random seed: the same seed, the same codes (default %(default)s)",
    )
    parser.add_argument(
        "--iterative-prompt",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="split long text into segments generated one after another (default: on)",
    )
    parser.add_argument(
        "--chunk-length", type=int32, default=100, help="segment length in UTF-8 bytes (default %(default)s)"
    )
    parser.add_argument(
        "--output-dir", type=Path, default=Path("temp"), help="where codes_N.npy go (default %(default)s)"
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda or cuda:N (default here: %(default)s)",
    )
    parser.add_argument("--half", action="store_true", help="fp16 weights (same as --precision fp16)")
    parser.add_argument(
        "--precision",
        choices=sorted(PRECISIONS),
        default=None,
        help="weight precision (default bf16, as the original)",
    )
    add_lever_arguments(parser)
    return parser.parse_args(argv)


def _precision(args: argparse.Namespace) -> torch.dtype:
    if args.half and args.precision not in (None, "fp16"):
        raise InputError(f"--half asks for fp16 but --precision says {args.precision}")
    return PRECISIONS["fp16" if args.half else (args.precision or "bf16")]


def _references(args: argparse.Namespace, config: DualARConfig) -> list[Reference]:
    if len(args.prompt_text) != len(args.prompt_tokens):
        raise InputError(
            f"got {len(args.prompt_text)} --prompt-text and {len(args.prompt_tokens)} --prompt-tokens; "
            "give one --prompt-tokens file per --prompt-text"
        )
    references = []
    for text, path in zip(args.prompt_text, args.prompt_tokens, strict=True):
        codes = load_npy(path, "prompt tokens")
        what = f"prompt tokens {path}"
        references.append(Reference.create(text, codes, config.num_codebooks, config.codebook_size, what))
    return references


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    dtype = _precision(args)
    params = SamplingParams(
        top_p=args.top_p,
        temperature=args.temperature,
        repetition_penalty=args.repetition_penalty,
        max_new_tokens=args.max_new_tokens,
    )
    if args.num_samples < 1:
        raise InputError(f"--num-samples must be at least 1, got {args.num_samples}")
    if args.chunk_length < 1:
        raise InputError(f"--chunk-length must be at least 1, got {args.chunk_length}")
    text_segments(args.text, iterative_prompt=args.iterative_prompt, chunk_length=args.chunk_length)
    check_writable(args.output_dir / "codes_0.npy", "--output-dir")  # before minutes of loading
    torch_device(args.device)
    checkpoint = resolve_checkpoint(args.checkpoint_path)
    references = _references(args, DualARConfig.from_json(checkpoint / CONFIG_FILE))

    started = time.perf_counter()
    model, tokenizer = load_lm(checkpoint, device=args.device, dtype=dtype)
    levers = levers_from_args(args)
    levers.apply(model, tokenizer)
    model.setup_caches(1)
    _progress(
        f"loaded {checkpoint} ({str(dtype).removeprefix('torch.')}, {levers.describe()}) "
        f"in {time.perf_counter() - started:.1f} s"
    )

    def report(index: int, count: int, generation: Generation, seconds: float) -> None:
        frames = generation.frames.shape[1]
        _progress(
            f"  segment {index + 1}/{count}: {frames} frames in {seconds:.1f} s ({frames / seconds:.2f} frames/s)"
        )

    torch.manual_seed(args.seed)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for sample in range(args.num_samples):
        _progress(f"sample {sample + 1}/{args.num_samples}")
        codes = generate_long(
            model,
            tokenizer,
            args.text,
            references=references,
            params=params,
            generator=generator,
            iterative_prompt=args.iterative_prompt,
            chunk_length=args.chunk_length,
            on_segment=report,
        )
        path = args.output_dir / f"codes_{sample}.npy"
        np.save(path, codes.numpy().astype(np.int32))
        _progress(f"wrote {path} ({codes.shape[1]} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
