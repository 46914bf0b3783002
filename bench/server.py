"""The server a Triton benchmark loads (`bench.load`, `bench.first_audio`): a running one at --url, or a
tritonserver started here on the benchmark's checkpoint with the deployment options given."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.lm_speed import PRECISIONS
from client.triton_stream import DEFAULT_URL
from export.build_repository import add_process_arguments
from fish_speech_triton.errors import FishSpeechError
from fish_speech_triton.hub import CODEC_FILE, missing_files
from fish_speech_triton.lm.levers import add_lever_arguments, levers_from_args
from fish_speech_triton.tools.make_random_checkpoint import (
    CODEC_CONFIG_FILE,
    RandomCheckpoint,
    write_random_checkpoint,
)

CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fish-speech-triton"


def add_server_arguments(parser: argparse.ArgumentParser, baseline: bool = False) -> None:
    """--url or --start-server, and the started server's LM precision, levers and process options.

    `baseline`: the tool also runs a baseline in this process, at --precision."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--url", default=DEFAULT_URL, help=f"a running server's gRPC address (default {DEFAULT_URL})"
    )
    where.add_argument(
        "--start-server", action="store_true", help="build the repository and run tritonserver here"
    )
    parser.add_argument(
        "--precision",
        choices=sorted(PRECISIONS),
        default="bf16",
        help="LM precision of the server started here"
        + (" and of the baseline run in this process" if baseline else "")
        + " (default bf16, the original's default)",
    )
    _add_deployment_arguments(
        parser.add_argument_group("with --start-server, its deployment options (default: the builder's)")
    )


def _add_deployment_arguments(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    add_lever_arguments(group)  # the server's only: a baseline is the faithful model
    add_process_arguments(group)
    group.add_argument("--stream-chunk-frames", type=int, default=32, help="frames per chunk after the first")


def warn_ignored_with_url(
    parser: argparse.ArgumentParser, args: argparse.Namespace, others: tuple = ()
) -> None:
    """With --url the running server's own settings apply: say once which options given here it ignores
    (the deployment options, and the tool's `others`, named by their dest)."""
    if args.start_server:
        return
    probe = argparse.ArgumentParser(add_help=False)
    _add_deployment_arguments(probe)
    dests = [*vars(probe.parse_args([])), *others]
    ignored = [f"--{d.replace('_', '-')}" for d in dests if getattr(args, d) != parser.get_default(d)]
    if ignored:
        print(
            f"[bench] WARNING: the server at {args.url} runs with its own settings; ignored: {', '.join(ignored)}",
            file=sys.stderr,
        )


def describe_server(args: argparse.Namespace, kv_slots: int) -> str:
    """The report's line for the server: its options when started here, else its address."""
    if not args.start_server:
        return args.url
    return (
        f"started here, kv_slots {kv_slots}, {args.precision}, {levers_from_args(args).describe()}, "
        f"torch_threads {args.torch_threads}, codec_threads {args.codec_threads}, encoder_threads "
        f"{args.encoder_threads}, codec_instances {args.codec_instances}, codec {args.codec_precision}, "
        f"stream_chunk_frames {args.stream_chunk_frames}, other options default"
    )


def bench_checkpoint(directory: Path | None, size: str) -> RandomCheckpoint:
    """The checkpoint in `directory` (LM files + codec generator [+ codec.json]), or a cached random one."""
    if directory is None:
        return write_random_checkpoint(CACHE_DIR / f"random-{size}", size)
    missing = missing_files(directory)
    if missing:
        raise FishSpeechError(
            f"{directory} has no {', '.join(missing)}: give a directory with the LM and codec files"
        )
    config = directory / CODEC_CONFIG_FILE
    return RandomCheckpoint(directory, directory / CODEC_FILE, config if config.is_file() else None)


@contextmanager
def serving(args: argparse.Namespace, checkpoint: RandomCheckpoint | None, kv_slots: int) -> Iterator[str]:
    """The gRPC address to load: --url, or a tritonserver started here on `checkpoint`."""
    if not args.start_server:
        yield args.url
        return
    if checkpoint is None:
        raise ValueError("starting a server needs a checkpoint")
    from export.build_repository import RepositoryOptions
    from fish_speech_triton.serve import ensure_repository
    from fish_speech_triton.triton_server import TritonServer, stop_on_signals

    stop_on_signals()  # a closed terminal too: the server runs in a session of its own

    opts = RepositoryOptions(
        llama_checkpoint=checkpoint.lm_dir,
        decoder_checkpoint=checkpoint.codec_path,
        decoder_config_name=None if checkpoint.codec_config else "firefly_gan_vq",
        decoder_config=checkpoint.codec_config,
        output_dir=(args.output_dir / "model_repository").resolve(),
        kv_slots=kv_slots,
        precision=args.precision,
        weight_quantization=args.weight_quantization,
        semantic_head_only=args.semantic_head_only,
        fast_transformer_runtime=args.fast_transformer_runtime,
        slow_transformer_runtime=args.slow_transformer_runtime,
        torch_threads=args.torch_threads,
        codec_instances=args.codec_instances,
        codec_threads=args.codec_threads,
        encoder_threads=args.encoder_threads,
        codec_precision=args.codec_precision,
        stream_chunk_frames=args.stream_chunk_frames,
    )
    ensure_repository(opts)
    log = args.output_dir / "tritonserver.log"
    print(f"[bench] starting tritonserver (kv_slots {kv_slots}, log {log})", file=sys.stderr, flush=True)
    with TritonServer(opts.output_dir, log_file=log) as server:
        yield server.grpc_url
