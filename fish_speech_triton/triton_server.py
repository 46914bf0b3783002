"""Running a real Triton Inference Server from the `nvidia-pytriton` wheel, without PyTriton's Python API.

The wheel ships a complete `tritonserver` binary (2.51), the Python backend and one backend stub per
Python version. We lay them out in a scratch directory the way `tritonserver` expects, point the stub at
the running interpreter's libpython and venv, and start the binary as a child process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fish_speech_triton.errors import FishSpeechError


class TritonServerError(FishSpeechError):
    """tritonserver is not installed, failed to start, or did not become ready."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pytriton_root() -> Path:
    try:
        import pytriton  # noqa: F401  (only its location is needed)
    except ImportError as exc:
        raise TritonServerError(
            "the embedded Triton server needs the 'server' extra: pip install 'fish-speech-triton[server]' "
            "(it installs nvidia-pytriton, which ships tritonserver 2.51 for Linux x86_64)"
        ) from exc
    root = Path(pytriton.__file__).parent / "tritonserver"
    if not (root / "bin" / "tritonserver").exists():
        raise TritonServerError(f"tritonserver binary not found under {root}")
    return root


def _prepare_backends(scratch: Path) -> tuple[Path, Path, Path]:
    """Copy the binary's backends and caches to `scratch`, adding the stub for this Python version."""
    root = _pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonServerError(f"the Triton wheel has no Python backend stub for Python {version}")
    backends = scratch / "backends"
    if not backends.exists():
        shutil.copytree(root / "backends", backends)
        shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
    caches = scratch / "caches"
    if not caches.exists():
        shutil.copytree(root / "caches", caches)
    return root / "bin" / "tritonserver", backends, caches


def server_environment() -> dict[str, str]:
    """Environment for tritonserver: its bundled libraries, libpython, and this venv first on PATH."""
    root = _pytriton_root()
    libs = root.parent.parent / "nvidia_pytriton.libs"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(libs), libdir, env.get("LD_LIBRARY_PATH", "")) if p
    )
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    # The backend stub embeds libpython; make sure it finds this interpreter's packages (and ours).
    project_root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(project_root), env.get("PYTHONPATH", "")) if p)
    return env


@dataclass
class TritonServer:
    """A tritonserver child process serving `model_repository` on local ports."""

    model_repository: Path
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    host: str = "127.0.0.1"
    log_verbose: int = 0
    log_file: Path | None = None
    extra_args: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _scratch: Path | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.http_port = self.http_port or free_port()
        self.grpc_port = self.grpc_port or free_port()
        self.metrics_port = self.metrics_port or free_port()

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self) -> list[str]:
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="fish-speech-triton-"))
        binary, backends, caches = _prepare_backends(self._scratch)
        return [
            str(binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backends}",
            f"--cache-directory={caches}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            "--exit-timeout-secs=10",
            f"--log-verbose={self.log_verbose}",
            *self.extra_args,
        ]

    def start(self, timeout_s: float = 300.0) -> TritonServer:
        """Start tritonserver and wait until it is ready; on any failure or interruption (Ctrl-C while it
        loads) the server is stopped and the scratch directory removed before the exception goes on."""
        try:
            cmd = self.command()
            out = open(self.log_file, "ab") if self.log_file else None  # noqa: SIM115 (lives as long as the process)
            # A session of its own: a terminal's Ctrl-C goes to this process only, which then stops the
            # server with its Python backend stubs (stubs that get the SIGINT themselves stay behind).
            self.process = subprocess.Popen(  # noqa: S603
                cmd,
                env=server_environment(),
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                start_new_session=True,
            )
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                hint = f" (see {self.log_file})" if self.log_file else ""
                raise TritonServerError(f"tritonserver exited with code {self.process.returncode}{hint}")
            if self.is_ready():
                return
            time.sleep(0.5)
        self.stop()
        raise TritonServerError(f"tritonserver was not ready after {timeout_s:.0f} s")

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait()

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                # SIGTERM, not SIGINT: a background job of a non-interactive shell starts with SIGINT
                # ignored, and the child inherits that. tritonserver shuts down gracefully on either.
                self.process.send_signal(signal.SIGTERM)
                self._wait_unreaped(timeout_s)
            # Then its whole process group (its own session, see start): what is left of it, a server past
            # timeout_s or the backend stubs of models still loading when it stopped or was stopped (they
            # outlive the server, 330 MB and more each). The group's id stays reserved while a member
            # lives, so it cannot name another group even once the server is reaped.
            with contextlib.suppress(ProcessLookupError):  # none left
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def _wait_unreaped(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for the server to exit, leaving it unreaped (a zombie)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        while os.waitid(os.P_PID, self.process.pid, flags) is None and time.monotonic() < deadline:
            time.sleep(0.05)

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_on_signals() -> None:
    """For a command that runs a TritonServer: Ctrl-C, SIGTERM (kill, Kubernetes, a script's trap) and SIGHUP
    all raise KeyboardInterrupt, on the way out of which the server is stopped cleanly.

    A background job of a non-interactive shell starts with SIGINT ignored; restore it, and turn SIGTERM
    into the same KeyboardInterrupt so that tritonserver is stopped on the way out.
    """

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)
    # A closed terminal or SSH session: tritonserver runs in a session of its own (TritonServer.start), so
    # the hang-up reaches only this process, which must then stop it.
    signal.signal(signal.SIGHUP, interrupt)
