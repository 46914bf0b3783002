"""The gateway's settings and the command-line options that set them (shared by the gateway's own command
and `python -m fish_speech_triton.serve --api-listen`). Light to import: no web or gRPC modules."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

API_KEY_ENV = "FISH_SPEECH_API_KEY"


@dataclass(frozen=True)
class GatewaySettings:
    triton_url: str = "127.0.0.1:8001"
    api_key: str | None = None
    max_text_length: int = 0  # 0: no limit
    # Largest request body: a few references of the encoder's 90 s at most, as wav in base64, fit well.
    max_body_mb: int = 64
    references_dir: Path | None = None  # the Triton server's references/ folder, to list and check voices
    # Web pages of these origins may call the API ("*": any, as the original allows; empty: none).
    cors_origins: tuple[str, ...] = ("*",)
    # Open connections (idle ones included) beyond which a request gets 503 at once: many stalled clients
    # make new ones wait for nothing less.
    max_connections: int = 1000
    # A request body that sends nothing for this long is answered 408 (its connection is then closed).
    body_timeout_s: float = 30.0
    # On SIGTERM, streams still running after this long are cut off (their Triton requests cancelled).
    shutdown_timeout_s: int = 30


def add_gateway_arguments(parser: argparse.ArgumentParser) -> None:
    """The options other than where the gateway listens and which Triton it talks to."""
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require 'Authorization: Bearer KEY' on the HTTP API (default: ${API_KEY_ENV}, else no key)",
    )
    parser.add_argument(
        "--max-text-length", type=int, default=0, help="refuse longer texts with 400 (0: no limit)"
    )
    parser.add_argument(
        "--max-body-mb",
        type=int,
        default=GatewaySettings.max_body_mb,
        help="refuse larger request bodies with 413 before reading them whole (default %(default)s MB)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=GatewaySettings.max_connections,
        help="open connections, idle ones included, beyond which requests get 503 (default %(default)s)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=GatewaySettings.body_timeout_s,
        help="seconds a request body may send nothing before a 408 (default %(default)s)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=int,
        default=GatewaySettings.shutdown_timeout_s,
        help="seconds streams may run on after SIGTERM before they are cut off (default %(default)s)",
    )
    parser.add_argument(
        "--cors-origins",
        default=",".join(GatewaySettings.cors_origins),
        help="comma-separated origins whose web pages may call the API, like https://app.example.com "
        "('*': any, the default, as the original; '': none)",
    )


def gateway_settings(
    args: argparse.Namespace, triton_url: str, references_dir: Path | None
) -> GatewaySettings:
    return GatewaySettings(
        triton_url=triton_url,
        api_key=args.api_key or None,
        max_text_length=max(0, args.max_text_length),
        max_body_mb=max(1, args.max_body_mb),
        references_dir=references_dir,
        cors_origins=tuple(origin.strip() for origin in args.cors_origins.split(",") if origin.strip()),
        max_connections=max(1, args.max_connections),
        body_timeout_s=max(0.1, args.body_timeout),
        shutdown_timeout_s=max(0, args.shutdown_timeout),
    )
