"""Time to first audio for a reference voice the server has not heard before, through the Triton ensemble.

python -m bench.first_audio --start-server [LM levers and deployment options]   # full-size random checkpoint
python -m bench.first_audio --url 127.0.0.1:8001 --references 30

One stream at a time. Each request carries a new ~10 s reference recording (synthetic speech, each one
different in pitch, pace and noise, and new to each run (--salt), so that neither the encoder nor the LM's
prefix cache has seen it, even on a server that earlier runs used) and
streams its audio; its time to first audio is the first chunk's arrival, the reference's encoding and the
prompt's prefill included. Then the last reference once more: its codes are in `vqgan_encoder`'s cache and
its prompt in the LM's prefix cache (which keeps the 16 latest), as a stored voice's are. A warm-up request
with a reference of its own comes first and is not counted. Prints
every request, the median and p90, and how many met --target-s; writes OUTPUT_DIR/first_audio.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.report import prepare_output_dir
from bench.server import (
    CACHE_DIR,
    add_server_arguments,
    bench_checkpoint,
    describe_server,
    serving,
    warn_ignored_with_url,
)
from bench.workload import TEXTS
from client.triton_stream import connect, stream
from fish_speech_triton.audio import CODEC_SAMPLE_RATE, synthetic_speech
from fish_speech_triton.errors import FishSpeechError
from fish_speech_triton.tools.cli import run_cli

REFERENCE_TEXT = (
    "This is the voice to clone. It speaks for about ten seconds, in full sentences, so that the model "
    "hears how it sounds, how fast it talks and where it pauses."
)


def new_reference(index: int, seconds: float, salt: int = 0) -> np.ndarray:
    """Reference `index`: `seconds` (+50 ms per index, in ten steps) of synthetic speech with its own noise,
    its pitch and pace scaled by 1 + 0.7% per index: every index gives other audio, codes and prompt, and
    every `salt` another set of them."""
    length = round((seconds + 0.05 * (index % 10)) * CODEC_SAMPLE_RATE)
    rate = 1 + 0.007 * index
    noise_seed = salt * 100_003 + index
    audio = synthetic_speech(length * rate / CODEC_SAMPLE_RATE + 0.01, CODEC_SAMPLE_RATE, seed=noise_seed)
    return np.interp(np.arange(length) * rate, np.arange(audio.size), audio).astype(np.float32)


def first_audio(url: str, text: str, reference: np.ndarray, max_new_tokens: int, seed: int) -> dict:
    """One streamed request: seconds to its first audio and to its end, seconds of audio."""
    inputs = {
        "TEXT": text,
        "REFERENCE_AUDIO": reference,
        "REFERENCE_SAMPLE_RATE": np.array([CODEC_SAMPLE_RATE], dtype=np.int32),
        "REFERENCE_TEXT": REFERENCE_TEXT,
        "MAX_NEW_TOKENS": np.array([max_new_tokens], dtype=np.int32),
        "SEED": np.array([seed], dtype=np.int64),
    }
    client = connect(url, "ensemble")
    try:
        started, first, samples = time.perf_counter(), None, 0
        for chunk in stream(client, "ensemble", inputs, ("AUDIO",)):
            first = first or time.perf_counter()
            samples += chunk["AUDIO"].size
        if first is None:
            raise FishSpeechError("the ensemble answered without audio")
        return {
            "ttfa_s": first - started,
            "latency_s": time.perf_counter() - started,
            "audio_s": samples / CODEC_SAMPLE_RATE,
        }
    finally:
        client.close()


def run(url: str, args: argparse.Namespace) -> dict:
    def request(name: str, index: int) -> dict:
        reference = new_reference(index, args.reference_seconds, args.salt)
        record = first_audio(url, TEXTS[index % len(TEXTS)], reference, args.max_new_tokens, 1000 + index)
        record = {"request": name, "reference_s": reference.size / CODEC_SAMPLE_RATE, **record}
        print(
            f"[first-audio] {name:>9}: reference {record['reference_s']:.2f} s, first audio "
            f"{record['ttfa_s']:.3f} s, {record['audio_s']:.2f} s of audio in {record['latency_s']:.2f} s",
            file=sys.stderr,
            flush=True,
        )
        return record

    request("warm-up", args.references)  # an index no measured request uses
    new = [request(f"new {i + 1}", i) for i in range(args.references)]
    again = request("again", args.references - 1)  # the latest prompt: still in the prefix cache
    times = [r["ttfa_s"] for r in new]
    return {
        "requests": [*new, again],
        "new_reference": {
            "median_s": statistics.median(times),
            "p90_s": float(np.percentile(times, 90)),
            "min_s": min(times),
            "max_s": max(times),
            "at_most_target": sum(t <= args.target_s for t in times),
            "count": len(times),
        },
        "same_reference_again_s": again["ttfa_s"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.first_audio",
        description=__doc__.split("\n\n")[0],
        epilog="One request at a time; do not run other benchmarks beside it.",
    )
    add_server_arguments(parser)
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        help="LM files + codec generator (+ codec.json) for --start-server. Default: a full-size random "
        f"checkpoint written once to {CACHE_DIR}",
    )
    parser.add_argument(
        "--references", type=int, default=10, help="new references, one request each (default %(default)s)"
    )
    parser.add_argument(
        "--reference-seconds",
        type=float,
        default=10.0,
        help="length of the first reference (+50 ms each; default %(default)s)",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=32, help="frames per request (default %(default)s)"
    )
    parser.add_argument(
        "--salt",
        type=int,
        default=None,
        help="picks this run's set of references (default: a random one, so a server that earlier runs "
        "used has not heard them; give the printed salt to send the same references again)",
    )
    parser.add_argument(
        "--target-s",
        type=float,
        default=1.5,
        help="count the requests whose first audio came within this many seconds (default %(default)s)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("build") / "bench-first-audio",
        help="report (and repository; default %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.references < 1 or args.max_new_tokens < 1 or args.reference_seconds <= 0:
        raise FishSpeechError("--references, --max-new-tokens and --reference-seconds must be positive")
    if args.salt is None:
        args.salt = secrets.randbelow(1_000_000)
    warn_ignored_with_url(parser, args, ("checkpoint_dir", "precision"))
    prepare_output_dir(args.output_dir)
    print(f"[first-audio] references of salt {args.salt}", file=sys.stderr)
    checkpoint = bench_checkpoint(args.checkpoint_dir, "full") if args.start_server else None
    started = time.perf_counter()
    with serving(args, checkpoint, kv_slots=1) as url:
        report = run(url, args)
    report["settings"] = {
        "command": " ".join(["python -m bench.first_audio", *(argv if argv is not None else sys.argv[1:])]),
        "server": describe_server(args, kv_slots=1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "duration_s": time.perf_counter() - started,
        "load_average_at_end": os.getloadavg(),
    }
    summary = report["new_reference"]
    print(  # before the file: a failed write still shows the result
        f"time to first audio, new {args.reference_seconds:g} s reference ({summary['count']} requests): "
        f"median {summary['median_s']:.3f} s, p90 {summary['p90_s']:.3f} s, "
        f"{summary['min_s']:.3f}-{summary['max_s']:.3f} s, {summary['at_most_target']} of "
        f"{summary['count']} at most {args.target_s:g} s; the same reference again "
        f"{report['same_reference_again_s']:.3f} s",
        flush=True,
    )
    path = args.output_dir / "first_audio.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"[first-audio] wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
