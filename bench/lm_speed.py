"""Single-stream speed of the DualAR LM at full size (random weights), in frames per second.

    python -m bench.lm_speed [--frames 64] [--threads 2] [--precision fp32 bf16] [--device cpu]

Writes a random full-size checkpoint (about 1.3 GB, bf16) to --checkpoint-dir the first time. Each run
prefills a short zero-shot prompt, then decodes --frames frames with the default sampling settings
(no early stop), after a short warm-up.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from fish_speech_triton.lm.checkpoint import load_lm, write_random_lm_checkpoint
from fish_speech_triton.lm.config import DualARConfig
from fish_speech_triton.lm.generation import Generation, SamplingParams, generate, prefill
from fish_speech_triton.lm.prompt import PromptBuilder

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TEXT = "Fish speech turns text into natural sounding speech, one frame at a time."
DONE_MARKER = ".complete"


def ensure_checkpoint(directory: Path) -> Path:
    if not (directory / DONE_MARKER).exists():
        print(f"writing a random full-size checkpoint to {directory}", file=sys.stderr, flush=True)
        write_random_lm_checkpoint(directory, DualARConfig.full_size())
        (directory / DONE_MARKER).touch()
    return directory


def run(checkpoint: Path, dtype: torch.dtype, device: str, frames: int, warmup: int) -> dict[str, float]:
    model, tokenizer = load_lm(checkpoint, device=device, dtype=dtype)
    model.setup_caches(1)
    prompt = PromptBuilder(tokenizer, model.config.num_codebooks).prompt(TEXT)

    def timed(call) -> float:
        started = time.perf_counter()
        call()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - started

    def frames_of(count: int) -> Generation:
        # im_end_id -1 never matches: exactly `count` frames
        params = SamplingParams(max_new_tokens=count)
        generator = torch.Generator(device=device).manual_seed(0)
        return generate(model, prompt, im_end_id=-1, params=params, generator=generator)

    frames_of(warmup)
    prefill_s = timed(lambda: prefill(model, prompt, 0, SamplingParams(), torch.Generator(device=device)))
    total_s = timed(lambda: frames_of(frames))
    return {
        "prompt": prompt.shape[1],
        "prefill_s": prefill_s,
        "decode_fps": (frames - 1) / (total_s - prefill_s),
        "total_fps": frames / total_s,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lm_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("artifacts/bench/lm-full-random"))
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", nargs="+", choices=sorted(PRECISIONS), default=["fp32", "bf16"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    checkpoint = ensure_checkpoint(args.checkpoint_dir)
    print(f"DualAR full size, random weights, {args.device}, {args.threads} threads, {args.frames} frames")
    # Other processes on a small machine change these figures a lot; the load average says how busy it was.
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    for name in args.precision:
        r = run(checkpoint, PRECISIONS[name], args.device, args.frames, args.warmup)
        print(
            f"{name}: {r['total_fps']:.2f} frames/s overall (prefill of {r['prompt']} positions "
            f"{r['prefill_s']:.2f} s, decode {r['decode_fps']:.2f} frames/s)",
            flush=True,
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
