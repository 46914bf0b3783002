"""Single-stream speed of the DualAR LM (the faithful loop), in frames per second.

    python -m bench.lm_speed [--frames 64] [--threads 2] [--precision fp32 bf16] [--device cpu]
        [--checkpoint-dir DIR]

A checkpoint in --checkpoint-dir (its LM files) is measured as it is; a missing or empty directory gets a
random full-size checkpoint (about 1.3 GB, bf16), written once. Each run prefills a short zero-shot prompt,
then decodes --frames frames with the default sampling settings (no early stop), after a short warm-up.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from unittest import mock

import torch

from fish_speech_triton.errors import InputError
from fish_speech_triton.hardware import torch_device
from fish_speech_triton.hub import LM_FILES, missing_files
from fish_speech_triton.lm import generation
from fish_speech_triton.lm.checkpoint import CONFIG_FILE, load_lm, write_random_lm_checkpoint
from fish_speech_triton.lm.config import DualARConfig
from fish_speech_triton.lm.generation import Generation, SamplingParams, generate, prefill
from fish_speech_triton.lm.prompt import PromptBuilder
from fish_speech_triton.tools.cli import int_range, run_cli
from fish_speech_triton.tools.make_random_checkpoint import WRITING, random_label, writing_random

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TEXT = "Fish speech turns text into natural sounding speech, one frame at a time."
DEFAULT_CHECKPOINT_DIR = Path("artifacts/bench/lm-full-random")


def add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=DEFAULT_CHECKPOINT_DIR,
        help="an LM checkpoint (its files are measured as they are), or a missing or empty directory for a "
        "random full-size one, written once (default %(default)s)",
    )


def ensure_checkpoint(directory: Path) -> Path:
    """`directory` as the LM checkpoint to measure. A random full-size one is written only into a missing or
    empty directory or one this tool wrote before: never over a real checkpoint, nor into another folder."""
    label = random_label(directory)
    if label is not None and label != WRITING:
        return directory
    if label is None:
        if not missing_files(directory, LM_FILES):
            return directory  # a real (e.g. downloaded) checkpoint
        if directory.exists() and any(directory.iterdir()):
            raise InputError(
                f"{directory} holds no LM checkpoint ({', '.join(LM_FILES)}) and is not empty: give a "
                "checkpoint's directory, or a new or empty one for a random checkpoint"
            )
    print(f"writing a random full-size checkpoint to {directory}", file=sys.stderr, flush=True)
    directory.mkdir(parents=True, exist_ok=True)
    with writing_random(directory, "random full size"):
        write_random_lm_checkpoint(directory, DualARConfig.full_size())
    return directory


def checkpoint_config(directory: Path) -> DualARConfig:
    """The architecture `ensure_checkpoint(directory)` gives, read before anything is written or loaded."""
    path = directory / CONFIG_FILE
    return DualARConfig.from_json(path) if path.is_file() else DualARConfig.full_size()


def describe_checkpoint(directory: Path) -> str:
    """The header's account of what is measured: the architecture and whose weights."""
    config = DualARConfig.from_json(directory / CONFIG_FILE)
    if config == DualARConfig.full_size():
        size = "full size"
    else:
        size = f"{config.n_layer}+{config.n_fast_layer} layers, dim {config.dim}"
    weights = "the checkpoint's weights" if random_label(directory) is None else "random weights"
    return f"DualAR {size}, {weights} ({directory})"


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(checkpoint: Path, dtype: torch.dtype, device: str, frames: int, warmup: int) -> dict[str, float]:
    model, tokenizer = load_lm(checkpoint, device=device, dtype=dtype)
    model.setup_caches(1)
    prompt = PromptBuilder(tokenizer, model.config.num_codebooks).prompt(TEXT)
    prefill_s = []

    def timed_prefill(*args, **kwargs) -> torch.Tensor:
        started = time.perf_counter()
        frame = prefill(*args, **kwargs)
        synchronize(device)
        prefill_s.append(time.perf_counter() - started)
        return frame

    def frames_of(count: int) -> Generation:
        # im_end_id -1 never matches: exactly `count` frames (fewer only where max_seq_len ends them)
        params = SamplingParams(max_new_tokens=count)
        generator = torch.Generator(device=device).manual_seed(0)
        return generate(model, prompt, im_end_id=-1, params=params, generator=generator)

    frames_of(warmup)
    # generate's own prefill is timed, inside the timed run: the decode rate is the rest of that run (a
    # prefill timed in a run of its own could take longer than this one's and make it negative).
    with mock.patch.object(generation, "prefill", timed_prefill):
        started = time.perf_counter()
        made = frames_of(frames).frames.shape[1]
        synchronize(device)
        total_s = time.perf_counter() - started
    return {
        "prompt": prompt.shape[1],
        "prefill_s": prefill_s[0],
        "decode_fps": (made - 1) / (total_s - prefill_s[0]),
        "total_fps": made / total_s,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lm_speed", description=__doc__.splitlines()[0])
    add_checkpoint_argument(parser)
    parser.add_argument(
        "--frames",
        type=int_range(2),
        default=64,
        help="frames per timed run, the prefill's included (default %(default)s)",
    )
    parser.add_argument(
        "--warmup", type=int_range(1), default=4, help="frames of the untimed first run (default %(default)s)"
    )
    parser.add_argument(
        "--threads", type=int_range(1), default=2, help="intra-op threads (default %(default)s)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default %(default)s)")
    parser.add_argument(
        "--precision",
        nargs="+",
        choices=sorted(PRECISIONS),
        default=["fp32", "bf16"],
        help="one run each (default fp32 bf16)",
    )
    args = parser.parse_args(argv)
    torch_device(args.device)
    torch.set_num_threads(args.threads)
    checkpoint = ensure_checkpoint(args.checkpoint_dir)
    print(f"{describe_checkpoint(checkpoint)}, {args.device}, {args.threads} threads, {args.frames} frames")
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
    sys.exit(run_cli(main))
