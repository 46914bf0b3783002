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


def _bounded_int(
    low: int | None, high: int | None, name: str, refusal: Callable[[int], str]
) -> Callable[[str], int]:
    """An argparse type for an integer in [low, high] (None: unbounded), refused with `refusal(value)`."""

    def parse(text: str) -> int:
        value = int(text)
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(refusal(value))
        return value

    parse.__name__ = name  # argparse names the type in its "invalid int32 value" message
    return parse


def int_type(bits: int) -> Callable[[str], int]:
    """An argparse type for a signed `bits`-bit integer input: a larger value is an error, never wrapped."""
    return _bounded_int(
        -(2 ** (bits - 1)),
        2 ** (bits - 1) - 1,
        f"int{bits}",
        lambda value: f"{value} does not fit a signed {bits}-bit integer",
    )


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type for an integer of at least `low` (and at most `high`, when given): checked when the
    command line is read, so a bad value costs a usage line, not minutes of loading and a traceback."""
    bounds = f"at least {low}" if high is None else f"from {low} to {high}"
    return _bounded_int(low, high, "integer", lambda value: f"must be {bounds}, got {value}")


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value
