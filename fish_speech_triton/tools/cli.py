"""What every command-line entry point shares: one clear error line and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from fish_speech_triton.errors import FishSpeechError

EXIT_USER_ERROR = 2


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run `main`, turning expected failures into `error: <message>` on stderr and exit code 2.

    Set FISH_SPEECH_TRITON_DEBUG=1 to get the full traceback instead.
    """
    try:
        return int(main(argv) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FishSpeechError, OSError) as exc:  # OSError: missing or unwritable files, broken connections
        if os.environ.get("FISH_SPEECH_TRITON_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


def int_type(bits: int) -> Callable[[str], int]:
    """An argparse type for a signed `bits`-bit integer input: a larger value is an error, never wrapped."""
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} does not fit a signed {bits}-bit integer")
        return value

    parse.__name__ = f"int{bits}"  # argparse names the type in its "invalid int32 value" message
    return parse
