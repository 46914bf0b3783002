"""Load test of the Triton service against the baseline (the original's eager, one-at-a-time loop), in one run.

python -m bench.load --start-server                       # full-size random checkpoint, concurrency 1..16
python -m bench.load --url 127.0.0.1:8001 --checkpoint-dir DIR
python -m bench.load --start-server --quick               # a small run on a small random checkpoint

Ours: the `ensemble` over gRPC streaming, c closed-loop clients. Baseline: the same requests (texts, seeds,
MAX_NEW_TOKENS) through eager PyTorch in this process, one at a time, not streamed, on the same checkpoint.
Per concurrency level: time to first audio p50/p90/p99, latency, real-time factor, audio seconds per wall
second, errors, and ours / baseline. Writes OUTPUT_DIR/bench.json, bench.md and bench.png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from bench.lm_speed import PRECISIONS
from bench.report import markdown_table, prepare_output_dir, write_reports
from bench.server import (
    CACHE_DIR,
    add_server_arguments,
    bench_checkpoint,
    describe_server,
    serving,
    warn_ignored_with_url,
)
from bench.stats import ratios, summarize
from bench.workload import WARMUP, LevelRun, Target, request_specs, run_level
from fish_speech_triton.errors import FishSpeechError
from fish_speech_triton.serving.semantic_requests import MAX_CHUNK_LENGTH, MIN_CHUNK_LENGTH
from fish_speech_triton.serving.threads import keep_main_thread_serial
from fish_speech_triton.tools.cli import int_range, run_cli
from fish_speech_triton.tools.make_random_checkpoint import RandomCheckpoint

FULL = {"concurrency": "1,2,4,8,16", "max_new_tokens": 64, "size": "full"}
QUICK = {"concurrency": "1,2", "max_new_tokens": 8, "size": "small"}


def parse_levels(text: str) -> list[int]:
    try:
        levels = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError as exc:
        raise FishSpeechError(f"--concurrency must be comma-separated integers, got {text!r}") from exc
    if not levels or levels[0] < 1:
        raise FishSpeechError(f"--concurrency levels must be at least 1, got {text!r}")
    return levels


@dataclass(frozen=True)
class Plan:
    """What both runs send: at each level c, c x rounds requests of max_new_tokens frames."""

    levels: list[int]
    rounds: int
    max_new_tokens: int
    chunk_length: int


async def sweep(target: Target, plan: Plan) -> list[LevelRun]:
    print(f"[bench] {target.name}: warm-up request", file=sys.stderr, flush=True)
    warmup = await target.run(WARMUP)
    if warmup.error is not None:  # every request would fail alike: stop, rather than report a table of them
        raise FishSpeechError(f"{target.name}: the warm-up request failed: {warmup.error}")
    return [await run_level(target, c, request_specs(c * plan.rounds)) for c in plan.levels]


def warn_if_other_checkpoint(url: str, checkpoint: RandomCheckpoint, precision: str) -> None:
    """Ratios only mean something on the same weights at the same precision: say so when the server's
    llama_semantic names another checkpoint or precision (--url: its options are the server's, not ours)."""
    try:
        config = grpcclient.InferenceServerClient(url).get_model_config("llama_semantic", as_json=True)
        parameters = {k: v["string_value"] for k, v in config["config"]["parameters"].items()}
    except (InferenceServerException, KeyError):
        return  # unreachable (reported by the run itself) or a server that does not say
    served = parameters.get("checkpoint_dir")
    if served is not None and Path(served).resolve() != checkpoint.lm_dir.resolve():
        print(
            f"[bench] WARNING: the server serves {served}, the baseline runs {checkpoint.lm_dir}; "
            "ratios compare different weights unless these are copies",
            file=sys.stderr,
        )
    served_precision = parameters.get("precision", "fp32")
    if served_precision != precision:
        print(
            f"[bench] WARNING: the server's LM runs {served_precision}, the baseline {precision} "
            f"(--precision); pass --precision {served_precision} for a like-for-like ratio",
            file=sys.stderr,
        )


async def sweep_ours(url: str, plan: Plan) -> list[LevelRun]:
    from bench.triton_target import TritonTarget

    target = await TritonTarget.connect(url, plan.max_new_tokens, plan.chunk_length)
    try:
        return await sweep(target, plan)
    finally:
        await target.close()


def sweep_baseline(checkpoint: RandomCheckpoint, plan: Plan, precision: str, threads: int) -> list[LevelRun]:
    from bench.baseline import EagerBaseline

    print(
        f"[bench] baseline: loading {checkpoint.lm_dir} ({precision}) in this process",
        file=sys.stderr,
        flush=True,
    )
    target = EagerBaseline(checkpoint, plan.max_new_tokens, plan.chunk_length, PRECISIONS[precision], threads)
    try:
        return asyncio.run(sweep(target, plan))
    finally:
        target.close()


def build_report(settings: dict, ours: list[LevelRun], baseline: list[LevelRun]) -> dict:
    by_level: dict[int, dict] = {}
    for run in [*ours, *baseline]:
        level = by_level.setdefault(run.concurrency, {"concurrency": run.concurrency})
        level[run.target] = summarize(run)
        level.setdefault("records", {})[run.target] = [
            {
                "index": r.index,
                "ttfa_s": r.ttfa,
                "latency_s": r.latency,
                "audio_s": r.audio_seconds,
                "error": r.error,
            }
            for r in run.records
        ]
    for level in by_level.values():
        if "ours" in level and "baseline" in level:
            level["ratio"] = ratios(level["ours"], level["baseline"])
    title = (
        f"fish-speech-triton bench, {settings['checkpoint']} ({settings['checkpoint_kind']}), "
        f"MAX_NEW_TOKENS {settings['max_new_tokens']}, {os.cpu_count()} CPU cores"
    )
    return {"title": title, "settings": settings, "levels": [by_level[c] for c in sorted(by_level)]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    add_server_arguments(parser, baseline=True)
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        help="LM files + codec generator (+ codec.json) for the baseline and --start-server; the server at "
        f"--url must serve the same. Default: a random checkpoint written once to {CACHE_DIR} (full size; "
        "small with --quick)",
    )
    parser.add_argument(
        "--concurrency", help=f"levels (default {FULL['concurrency']}; --quick {QUICK['concurrency']})"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="requests per client per level (level c sends c x rounds; default %(default)s)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        help=f"frames per request, both runs (default {FULL['max_new_tokens']}; --quick {QUICK['max_new_tokens']})",
    )
    parser.add_argument(
        "--chunk-length",
        type=int_range(MIN_CHUNK_LENGTH, MAX_CHUNK_LENGTH),
        default=200,
        help=f"text segment length ({MIN_CHUNK_LENGTH} to {MAX_CHUNK_LENGTH}), both runs (default %(default)s)",
    )
    parser.add_argument(
        "--kv-slots", type=int, help="with --start-server: LM slots (default: the largest level)"
    )
    parser.add_argument("--no-baseline", action="store_true", help="measure ours only (no ratios)")
    parser.add_argument(
        "--quick", action="store_true", help="a small run: levels 1,2, 8 frames, small checkpoint"
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("build") / "bench",
        help="reports (and the repository; default %(default)s)",
    )
    args = parser.parse_args(argv)
    threads = keep_main_thread_serial()  # this process's compute is the baseline's, on its worker thread
    preset = QUICK if args.quick else FULL
    plan = Plan(
        levels=parse_levels(args.concurrency or preset["concurrency"]),
        rounds=args.rounds,
        max_new_tokens=preset["max_new_tokens"] if args.max_new_tokens is None else args.max_new_tokens,
        chunk_length=args.chunk_length,
    )
    if plan.rounds < 1 or plan.max_new_tokens < 1:
        raise FishSpeechError("--rounds and --max-new-tokens must be at least 1")
    if args.kv_slots is not None and args.kv_slots < 1:
        raise FishSpeechError("--kv-slots must be at least 1")
    warn_ignored_with_url(
        parser, args, ("kv_slots", *(("checkpoint_dir", "precision") if args.no_baseline else ()))
    )
    prepare_output_dir(args.output_dir)
    # Only the baseline and a server started here load the checkpoint: --url --no-baseline writes none.
    needs_checkpoint = args.start_server or not args.no_baseline
    checkpoint = bench_checkpoint(args.checkpoint_dir, preset["size"]) if needs_checkpoint else None
    kv_slots = args.kv_slots or max(plan.levels)
    kind = "given" if args.checkpoint_dir else f"random {preset['size']}"
    settings = {
        "command": " ".join(["python -m bench.load", *(argv if argv is not None else sys.argv[1:])]),
        "checkpoint": str(checkpoint.lm_dir) if checkpoint else args.url,
        "checkpoint_kind": kind if checkpoint else "the server's",
        **asdict(plan),
        "server": describe_server(args, kv_slots),
        "baseline_precision": args.precision,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{threads} torch threads (baseline)",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average_at_start": os.getloadavg(),  # the machine may be shared: other work skews both runs
    }
    started = time.perf_counter()

    def report(ours: list[LevelRun], baseline: list[LevelRun]) -> dict:
        settings["duration_s"] = time.perf_counter() - started
        settings["load_average_at_end"] = os.getloadavg()
        return build_report(settings, ours, baseline)

    with serving(args, checkpoint, kv_slots) as url:
        if not args.start_server and not args.no_baseline:
            warn_if_other_checkpoint(url, checkpoint, args.precision)
        ours = asyncio.run(sweep_ours(url, plan))
    baseline = []
    if not args.no_baseline:
        # The baseline's run is long: ours' results are saved first, so that its failure or a Ctrl-C keeps them.
        paths = write_reports(report(ours, []), args.output_dir)
        print(f"[bench] wrote ours' results to {paths[0]}; now the baseline", file=sys.stderr, flush=True)
        baseline = sweep_baseline(checkpoint, plan, args.precision, threads)
    final = report(ours, baseline)
    print(markdown_table(final), flush=True)  # before the files: a failed write still shows the results
    paths = write_reports(final, args.output_dir)
    print(
        f"[bench] wrote {', '.join(str(p) for p in paths)} in {settings['duration_s']:.0f} s", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
