"""Serve Fish-Speech with a local Triton Inference Server (the one shipped in the nvidia-pytriton wheel).

    python -m fish_speech_triton.serve --llama-checkpoint-path checkpoints/fish-speech-1.5 \
        --decoder-checkpoint-path checkpoints/fish-speech-1.5/firefly-gan-vq-fsq-8x1024-21hz-generator.pth

builds the model repository when it is missing or was built with other options, then runs `tritonserver`
in the foreground until Ctrl-C. `--demo` needs no checkpoint: it writes a small random one first, which
produces noise, not speech (download fishaudio/fish-speech-1.5 for real voices).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import export
from export.build_repository import (
    BUILD_INFO,
    RepositoryOptions,
    add_arguments,
    build_repository,
    default_references_dir,
    options_from_args,
)
from fish_speech_triton.code_digest import builder_digest, file_stamps
from fish_speech_triton.errors import FishSpeechError
from fish_speech_triton.gateway.options import add_gateway_arguments, gateway_settings
from fish_speech_triton.tools.cli import run_cli
from fish_speech_triton.triton_server import TritonServer, stop_on_signals

DEMO_DIR = Path("checkpoints") / "random-small"


def ensure_repository(opts: RepositoryOptions, rebuild: bool = False) -> Path:
    """Build the repository unless one built with exactly these options, by this builder and from these
    templates, out of the same checkpoint files, is already there."""
    info_path = opts.output_dir / BUILD_INFO
    built_by = builder_digest(Path(export.__file__).resolve().parent.parent)
    sources = [
        opts.llama_checkpoint,
        opts.decoder_checkpoint,
        *([opts.decoder_config] if opts.decoder_config else []),
    ]
    wanted = json.dumps(
        {"options": asdict(opts), "code": built_by, "files": file_stamps(sources)},
        default=str,
        sort_keys=True,
    )
    if not rebuild and info_path.exists() and info_path.read_text() == wanted:
        print(f"[serve] using the model repository in {opts.output_dir}", file=sys.stderr)
        return opts.output_dir
    build_repository(opts)
    info_path.write_text(wanted)
    return opts.output_dir


def parse_listen(value: str, option: str = "--listen") -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FishSpeechError(f"{option} must be HOST:PORT with a port from 1 to 65535, got {value!r}")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fish_speech_triton.serve",
        description="Build the Fish-Speech model repository if needed and run a local Triton server.",
    )
    add_arguments(parser)
    parser.add_argument(
        "--demo", action="store_true", help="serve a small random checkpoint (noise, not speech)"
    )
    parser.add_argument("--listen", default="127.0.0.1:8000", help="HTTP address of Triton (HOST:PORT)")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--model-repository", type=Path, default=Path("build") / "model_repository")
    parser.add_argument(
        "--rebuild", action="store_true", help="rebuild the repository even if it looks current"
    )
    parser.add_argument("--log-verbose", type=int, default=0, help="tritonserver --log-verbose level")
    parser.add_argument(
        "--api-listen",
        metavar="HOST:PORT",
        help="also serve the Fish-Speech HTTP API, OpenAI's /v1/audio/speech and the WebUI here",
    )
    add_gateway_arguments(parser)
    args = parser.parse_args(argv)
    stop_on_signals()
    api_address = parse_listen(args.api_listen, "--api-listen") if args.api_listen else None

    if args.demo and (args.llama_checkpoint_path or args.decoder_checkpoint_path or args.decoder_config):
        raise FishSpeechError(
            "--demo serves a random checkpoint of its own: drop it, or drop the checkpoint paths and "
            "--decoder-config"
        )
    if args.demo:
        from fish_speech_triton.tools.make_random_checkpoint import write_random_checkpoint

        print(
            "[serve] --demo: serving a small RANDOM checkpoint; it produces noise, not speech. For real voices "
            "download https://huggingface.co/fishaudio/fish-speech-1.5 and pass its files.",
            file=sys.stderr,
        )
        ckpt = write_random_checkpoint(DEMO_DIR, "small")
        args.llama_checkpoint_path = str(ckpt.lm_dir)
        args.decoder_checkpoint_path = str(ckpt.codec_path)
        args.decoder_config = ckpt.codec_config
    opts = options_from_args(args, args.model_repository)
    ensure_repository(opts, rebuild=args.rebuild)

    host, http_port = parse_listen(args.listen)
    server = TritonServer(
        opts.output_dir,
        http_port=http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        host=host,
        log_verbose=args.log_verbose,
    )
    print(
        f"[serve] starting tritonserver: HTTP {host}:{http_port}  gRPC {host}:{args.grpc_port}",
        file=sys.stderr,
    )
    gateway = None
    try:
        server.start()
        print(
            f"[serve] ready: models vqgan_encoder, llama_semantic, vqgan_decoder, ensemble on {host} "
            f"(HTTP {http_port}, gRPC {args.grpc_port}, metrics {args.metrics_port}). Ctrl-C stops.",
            file=sys.stderr,
            flush=True,
        )
        if api_address is not None:
            from fish_speech_triton.gateway.server import GatewayThread  # web stack only when asked for

            references = default_references_dir(opts)
            settings = gateway_settings(args, server.grpc_url, references)
            gateway = GatewayThread(settings, *api_address).start()
            print(f"[serve] Fish-Speech HTTP API and WebUI on {gateway.url}", file=sys.stderr, flush=True)
        return server.wait()
    finally:
        if gateway is not None:
            gateway.stop()
        server.stop()


if __name__ == "__main__":
    sys.exit(run_cli(main))
