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
    )
