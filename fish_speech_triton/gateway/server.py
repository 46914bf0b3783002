"""Running the gateway on uvicorn: in the foreground (the command) or on a background thread (`serve`, tests)."""

from __future__ import annotations

import threading
import time

import uvicorn

from fish_speech_triton.errors import FishSpeechError
from fish_speech_triton.gateway.app import create_app
from fish_speech_triton.gateway.options import GatewaySettings


def uvicorn_server(
    settings: GatewaySettings, host: str, port: int, log_level: str = "info"
) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
    )
    return uvicorn.Server(config)


class GatewayThread:
    """The gateway on a daemon thread with its own event loop; `port=0` picks a free port."""

    def __init__(
        self, settings: GatewaySettings, host: str = "127.0.0.1", port: int = 0, log_level: str = "info"
    ):
        self.host = host
        self.shutdown_timeout_s = settings.shutdown_timeout_s
        self.server = uvicorn_server(settings, host, port, log_level)
        self.thread = threading.Thread(target=self.server.run, name="fish-speech-gateway", daemon=True)
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> GatewayThread:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise FishSpeechError(f"the HTTP gateway could not start on {self.host}:{self.port}")
            time.sleep(0.05)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Stop taking requests; streams still running get the settings' shutdown_timeout_s to end."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(self.shutdown_timeout_s + 5)

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
