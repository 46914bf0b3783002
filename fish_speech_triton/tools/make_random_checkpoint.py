"""Write a random Fish-Speech checkpoint in the official file formats (for tests, demos and benchmarks).

    python -m fish_speech_triton.tools.make_random_checkpoint --output-dir checkpoints/random-small --size small

The LM directory (config.json, model.pth, tokenizer.tiktoken, special_tokens.json) and the codec generator
(firefly-gan-vq-fsq-8x1024-21hz-generator.pth, plus codec.json for the small architecture) go through the
same loaders as the published files. Random weights speak noise: for real speech download
fishaudio/fish-speech-1.5.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fish_speech_triton.errors import InputError
from fish_speech_triton.hub import CHECKPOINT_FILES, CODEC_FILE, missing_files
from fish_speech_triton.tools.cli import run_cli

CODEC_CONFIG_FILE = "codec.json"
# In a folder of random weights written here: which checkpoint (e.g. "small 0"), or WRITING during a write.
RANDOM_MARKER = ".complete"
WRITING = "writing"


def random_label(directory: Path) -> str | None:
    """What random checkpoint was written into `directory` (WRITING: a write that may have stopped), or None
    when it holds none of ours."""
    marker = directory / RANDOM_MARKER
    return marker.read_text() if marker.is_file() else None


@contextmanager
def writing_random(directory: Path, label: str) -> Iterator[None]:
    """Mark `directory` as being written until the block ends: an interrupted write is rewritten next time,
    never taken as done."""
    marker = directory / RANDOM_MARKER
    marker.write_text(WRITING)
    yield
    marker.write_text(label)


@dataclass(frozen=True)
class RandomCheckpoint:
    lm_dir: Path
    codec_path: Path
    codec_config: Path | None  # None: the named full-size architecture `firefly_gan_vq`


def write_random_checkpoint(output_dir: Path, size: str = "small", seed: int = 0) -> RandomCheckpoint:
    """Write (or reuse, when already complete) a random checkpoint of the `small` or `full` architecture."""
    from fish_speech_triton.codec.checkpoint import write_random_codec_checkpoint
    from fish_speech_triton.codec.config import codec_config_to_dict, load_codec_config, small_codec_config
    from fish_speech_triton.lm.checkpoint import write_random_lm_checkpoint
    from fish_speech_triton.lm.config import DualARConfig

    if size not in ("small", "full"):
        raise ValueError(f"size must be 'small' or 'full', got {size!r}")
    output_dir.mkdir(parents=True, exist_ok=True)
    codec_path = output_dir / CODEC_FILE
    codec_config_path = output_dir / CODEC_CONFIG_FILE if size == "small" else None
    label = random_label(output_dir)
    if label == f"{size} {seed}":
        return RandomCheckpoint(output_dir, codec_path, codec_config_path)
    if label is None:  # not written by this tool: refuse to write random weights over real ones
        present = [name for name in CHECKPOINT_FILES if name not in missing_files(output_dir)]
        if present:
            raise InputError(
                f"{output_dir} already holds {', '.join(present)}, not written by this tool: give another "
                "--output-dir (random weights would replace them)"
            )
    with writing_random(output_dir, f"{size} {seed}"):
        lm_config = DualARConfig.small() if size == "small" else DualARConfig.full_size()
        print(f"[checkpoint] writing a random {size} LM to {output_dir}", file=sys.stderr)
        write_random_lm_checkpoint(output_dir, lm_config, seed=seed)
        codec_config = small_codec_config() if size == "small" else load_codec_config("firefly_gan_vq")
        if codec_config_path is not None:
            codec_config_path.write_text(json.dumps(codec_config_to_dict(codec_config), indent=2))
        print(f"[checkpoint] writing a random {size} codec to {codec_path}", file=sys.stderr)
        write_random_codec_checkpoint(codec_path, codec_config, seed=seed)
    return RandomCheckpoint(output_dir, codec_path, codec_config_path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fish_speech_triton.tools.make_random_checkpoint",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument(
        "--size",
        choices=("small", "full"),
        default="small",
        help="small: tiny dims for tests and the demo; full: the dims of the published model (~0.64 B params)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    ckpt = write_random_checkpoint(args.output_dir, args.size, args.seed)
    print(f"LM checkpoint:    {ckpt.lm_dir}")
    print(f"codec checkpoint: {ckpt.codec_path}")
    if ckpt.codec_config:
        print(f"codec config:     {ckpt.codec_config} (pass it with --decoder-config / --config)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
