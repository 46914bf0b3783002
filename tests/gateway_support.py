"""Starting the HTTP gateway on a free port in front of the session's real tritonserver (tests/test_gateway*.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fish_speech_triton.gateway.options import GatewaySettings
from fish_speech_triton.gateway.server import GatewayThread


@contextmanager
def running_gateway(deployment, **settings) -> Iterator[GatewayThread]:
    """A gateway for `deployment` (a TritonDeployment) with its stored voices; `settings` override the rest."""
    options = {"triton_url": deployment.grpc_url, "references_dir": deployment.references_dir, **settings}
    with GatewayThread(GatewaySettings(**options), log_level="warning") as gateway:
        yield gateway
