"""python -m fish_speech_triton.gateway --listen 127.0.0.1:8080 --triton-url 127.0.0.1:8001 [--api-key KEY]
    [--max-text-length N] [--references-dir DIR] [--max-connections N] [--body-timeout S] [...]

Serves the original Fish-Speech HTTP API (/v1/tts, /v1/vqgan/*, /v1/health), OpenAI's /v1/audio/speech and
the WebUI at / in front of a Triton server; see docs/http_api.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from client.triton_stream import DEFAULT_URL
from fish_speech_triton.gateway.options import add_gateway_arguments, gateway_settings
from fish_speech_triton.gateway.server import uvicorn_server
from fish_speech_triton.serve import parse_listen
from fish_speech_triton.tools.cli import run_cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fish_speech_triton.gateway", description=__doc__.split("\n\n")[1].strip()
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:8080", help="HTTP address HOST:PORT (default %(default)s)"
    )
    parser.add_argument(
        "--triton-url", default=DEFAULT_URL, help="Triton gRPC address HOST:PORT (default %(default)s)"
    )
    parser.add_argument(
        "--references-dir",
        type=Path,
        help="the Triton server's stored voices (references/<id>/), to list them and check reference ids",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug", "trace"),
        help="uvicorn log level (default %(default)s)",
    )
    add_gateway_arguments(parser)
    args = parser.parse_args(argv)
    host, port = parse_listen(args.listen)
    uvicorn_server(
        gateway_settings(args, args.triton_url, args.references_dir), host, port, args.log_level
    ).run()
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
