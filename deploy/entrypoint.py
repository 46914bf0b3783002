"""Container entrypoint: fetch the checkpoint if needed, build the Triton repository, exec tritonserver.

1. If the checkpoint directory (usually on a PVC) lacks any file of `fishaudio/fish-speech-1.5`, download
   the missing ones with huggingface_hub, unless downloads are off (HF_HUB_OFFLINE=1 or
   FISH_SPEECH_DOWNLOAD=0). Replicas sharing a volume take turns through a lock file.
2. Build the model repository for this device with `python -m export.build_repository` into the work
   directory (an emptyDir). A container restart in the same pod reuses it when nothing changed.
3. Replace this process with tritonserver (so it is PID 1 and gets SIGTERM directly); arguments given to
   the container are appended to its command line.

Until then this process is PID 1 (nvidia_entrypoint.sh execs it), and PID 1 ignores SIGTERM unless it
handles it: SIGTERM or SIGINT during steps 1 and 2 stops the build and exits with 128 + the signal.

Settings are environment variables, listed in `Settings.from_env` and docs/deploy.md. Other modes, each
only as the first argument: `--check` verifies the image's Python environment (run by the Dockerfile),
`--dry-run` prints the plan, `--drain` is the pod's preStop hook (waits until no request is in flight, see
`drain`), `-h`/`--help` prints this. For tritonserver's own options run the image with
`--entrypoint tritonserver` and `--help`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from fish_speech_triton.code_digest import builder_digest, file_stamps
from fish_speech_triton.hub import CHECKPOINT_FILES, CODEC_FILE, DEFAULT_REPO_ID, missing_files
from fish_speech_triton.serving.lm_metrics import read_gauges

DEVICES = ("cuda", "cpu")
PRECISIONS = ("bf16", "fp16", "fp32")
EXIT_CONFIG = 2  # a setting or a missing checkpoint: the log line says what to change


class EntrypointError(Exception):
    """A problem the operator fixes by changing a setting or the mounted volume."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip() or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise EntrypointError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise EntrypointError(f"{name}={value} must be at least {minimum}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: Sequence[str]) -> str:
    value = env.get(name, "").strip() or default
    if value not in choices:
        raise EntrypointError(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class Settings:
    app_dir: Path
    checkpoint_dir: Path
    references_dir: Path
    work_dir: Path
    prebuilt_repository: Path | None
    hf_repo_id: str
    hf_revision: str | None
    download: bool
    device: str
    precision: str
    kv_slots: int
    lm_instances: int
    build_extra_args: tuple[str, ...]
    http_port: int
    grpc_port: int
    metrics_port: int
    exit_timeout_secs: int
    drain_secs: int
    python_shm_bytes: int
    log_verbose: int
    triton_extra_args: tuple[str, ...]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        device = _choice(env, "FISH_SPEECH_DEVICE", "cuda", DEVICES)
        offline = env.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        prebuilt = env.get("FISH_SPEECH_MODEL_REPOSITORY", "").strip()
        return cls(
            app_dir=Path(env.get("FISH_SPEECH_APP_DIR", "/opt/fish-speech-triton")),
            checkpoint_dir=Path(env.get("FISH_SPEECH_CHECKPOINT_DIR", "/models/checkpoints/fish-speech-1.5")),
            references_dir=Path(env.get("FISH_SPEECH_REFERENCES_DIR", "/models/references")),
            work_dir=Path(env.get("FISH_SPEECH_WORK_DIR", "/var/lib/fish-speech")),
            prebuilt_repository=Path(prebuilt) if prebuilt else None,
            hf_repo_id=env.get("FISH_SPEECH_HF_REPO_ID", "").strip() or DEFAULT_REPO_ID,
            hf_revision=env.get("FISH_SPEECH_HF_REVISION", "").strip() or None,
            download=not offline and env.get("FISH_SPEECH_DOWNLOAD", "1").strip() not in ("0", "false", "no"),
            device=device,
            precision=_choice(
                env, "FISH_SPEECH_PRECISION", "bf16" if device == "cuda" else "fp32", PRECISIONS
            ),
            kv_slots=_int(env, "FISH_SPEECH_KV_SLOTS", 8, minimum=1),
            lm_instances=_int(env, "FISH_SPEECH_LM_INSTANCES", 1, minimum=1),
            build_extra_args=tuple(shlex.split(env.get("FISH_SPEECH_BUILD_EXTRA_ARGS", ""))),
            http_port=_int(env, "TRITON_HTTP_PORT", 8000, minimum=1),
            grpc_port=_int(env, "TRITON_GRPC_PORT", 8001, minimum=1),
            metrics_port=_int(env, "TRITON_METRICS_PORT", 8002, minimum=1),
            exit_timeout_secs=_int(env, "TRITON_EXIT_TIMEOUT_SECS", 60),
            drain_secs=_int(env, "FISH_SPEECH_DRAIN_SECS", 55),
            python_shm_bytes=_int(env, "TRITON_PYTHON_SHM_BYTES", 64 * 1024 * 1024, minimum=1024 * 1024),
            log_verbose=_int(env, "TRITON_LOG_VERBOSE", 0),
            triton_extra_args=tuple(shlex.split(env.get("TRITON_EXTRA_ARGS", ""))),
        )

    @property
    def repository(self) -> Path:
        return self.prebuilt_repository or self.work_dir / "model_repository"


def log(message: str) -> None:
    print(f"[entrypoint] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock file, so replicas sharing one volume download once, one after another."""
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _hf_download(repo_id: str, revision: str | None, local_dir: Path, files: Sequence[str]) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(
        repo_id=repo_id, revision=revision, local_dir=str(local_dir), allow_patterns=list(files)
    )


Downloader = Callable[[str, str | None, Path, Sequence[str]], None]


def ensure_checkpoint(settings: Settings, download: Downloader = _hf_download) -> None:
    ckpt = settings.checkpoint_dir
    missing = missing_files(ckpt)
    if not missing:
        log(f"checkpoint present: {ckpt}")
        return
    how = (
        f"put {', '.join(CHECKPOINT_FILES)} of https://huggingface.co/{settings.hf_repo_id} into {ckpt} "
        f"(for example `hf download {settings.hf_repo_id} --local-dir {ckpt}` in a pod "
        "that mounts the volume)"
    )
    if not settings.download:
        raise EntrypointError(
            f"checkpoint incomplete, missing {', '.join(missing)}; downloads are off: {how}"
        )
    try:
        ckpt.mkdir(parents=True, exist_ok=True)
        lock = ckpt / ".fish-speech-download.lock"
        with _exclusive(lock):
            missing = missing_files(ckpt)  # another replica may have finished meanwhile
            if missing:
                log(f"downloading {', '.join(missing)} from {settings.hf_repo_id} into {ckpt}")
                download(settings.hf_repo_id, settings.hf_revision, ckpt, missing)
    except EntrypointError:
        raise
    except Exception as exc:  # offline, read-only volume, rate limit: all mean the operator must act
        raise EntrypointError(
            f"downloading the checkpoint failed ({exc.__class__.__name__}: {exc}); {how}"
        ) from exc
    missing = missing_files(ckpt)
    if missing:
        raise EntrypointError(f"still missing after the download: {', '.join(missing)}; {how}")


def build_command(settings: Settings, output_dir: Path) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "export.build_repository",
        "--llama-checkpoint-path",
        str(settings.checkpoint_dir),
        "--decoder-checkpoint-path",
        str(settings.checkpoint_dir / CODEC_FILE),
        "--output-dir",
        str(output_dir),
        "--device",
        settings.device,
        "--precision",
        settings.precision,
        "--kv-slots",
        str(settings.kv_slots),
        "--lm-instances",
        str(settings.lm_instances),
        # Always passed: the model reads voices from it per request, so voices added later need no restart.
        "--references-dir",
        str(settings.references_dir),
    ]
    return cmd + list(settings.build_extra_args)


def _build_fingerprint(settings: Settings, command: Sequence[str]) -> str:
    """What the built repository depends on: the command, the builder and the checkpoint files."""
    files = file_stamps(settings.checkpoint_dir / name for name in CHECKPOINT_FILES)
    code = builder_digest(settings.app_dir)  # a new image never reuses an old repository
    blob = json.dumps({"command": list(command[1:]), "files": files, "code": code}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


Runner = Callable[..., subprocess.CompletedProcess]
_children: list[subprocess.Popen] = []  # what _stop must terminate


def _run_child(command: Sequence[str], cwd: Path, check: bool) -> subprocess.CompletedProcess:
    """subprocess.run, with the child known to _stop while it runs."""
    with subprocess.Popen(command, cwd=cwd) as child:
        _children.append(child)
        try:
            returncode = child.wait()
        finally:
            _children.remove(child)
    if check and returncode:
        raise subprocess.CalledProcessError(returncode, command)
    return subprocess.CompletedProcess(command, returncode)


def _stop(signum: int, frame: object) -> None:
    """SIGTERM/SIGINT before tritonserver runs: stop the builder and exit now, not after the grace period.

    os._exit, not SystemExit: the download's worker threads would hold up a normal exit. The lock file is
    released by the kernel, and the next start discards a half-built repository and resumes a download.
    """
    # os.write: print() may be in the middle of writing stderr when the signal arrives.
    os.write(2, f"[entrypoint] {signal.Signals(signum).name} during start-up: stopping\n".encode())
    for child in list(_children):
        with contextlib.suppress(OSError):
            child.terminate()
    os._exit(128 + signum)


def build_repository(settings: Settings, run: Runner = _run_child) -> Path:
    """Build the repository unless the work directory already holds one built from the same inputs."""
    repo = settings.repository
    partial = repo.with_name(repo.name + ".partial")
    stamp = repo.with_name(repo.name + ".stamp")
    fingerprint = _build_fingerprint(settings, build_command(settings, repo))
    if repo.is_dir() and stamp.is_file() and stamp.read_text().strip() == fingerprint:
        log(f"model repository up to date: {repo}")
        return repo
    repo.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(partial, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    command = build_command(settings, partial)
    log(f"building the model repository: {shlex.join(command)}")
    result = run(command, cwd=settings.app_dir, check=False)
    if result.returncode != 0:
        raise EntrypointError(f"the repository build failed (exit {result.returncode}); see the lines above")
    shutil.rmtree(repo, ignore_errors=True)
    partial.rename(repo)
    stamp.write_text(fingerprint + "\n")
    return repo


def server_command(settings: Settings, extra: Sequence[str] = ()) -> list[str]:
    shm = settings.python_shm_bytes
    return [
        "tritonserver",
        f"--model-repository={settings.repository}",
        "--model-control-mode=none",  # load every model at start; a model that fails to load stops the server
        "--exit-on-error=true",
        "--strict-readiness=true",  # /v2/health/ready only when every model is ready
        f"--exit-timeout-secs={settings.exit_timeout_secs}",
        "--log-format=ISO8601",
        f"--log-verbose={settings.log_verbose}",
        f"--http-port={settings.http_port}",
        f"--grpc-port={settings.grpc_port}",
        "--allow-metrics=true",
        f"--allow-gpu-metrics={'true' if settings.device == 'cuda' else 'false'}",
        f"--metrics-port={settings.metrics_port}",
        f"--backend-config=python,shm-default-byte-size={shm}",
        f"--backend-config=python,shm-growth-byte-size={shm}",
        *settings.triton_extra_args,
        *extra,
    ]


def self_check(require_cuda: bool = True) -> list[str]:
    """Problems with the image's Python environment; empty when the Python backend has what it imports."""
    problems: list[str] = []
    for module in ("numpy", "tiktoken", "huggingface_hub", "fish_speech_triton", "export.build_repository"):
        try:
            importlib.import_module(module)
        except Exception as exc:
            problems.append(f"cannot import {module}: {exc}")
    try:
        import torch

        if require_cuda and torch.version.cuda is None:
            problems.append(f"torch {torch.__version__} is a CPU-only build")
    except Exception as exc:
        problems.append(f"cannot import torch: {exc}")
    try:
        import onnxruntime

        if require_cuda and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            problems.append(
                "onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu is not the one installed)"
            )
    except Exception as exc:
        problems.append(f"cannot import onnxruntime: {exc}")
    if shutil.which("tritonserver") is None:
        problems.append("tritonserver is not on PATH")
    return problems


def drain(
    metrics_url: str,
    limit_s: float,
    settle_s: float = 5.0,
    poll_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """The pod's preStop hook: wait until the LM holds no request, so that SIGTERM finds nothing in flight.

    Triton 2.51 never finishes an ensemble stream that is in flight at SIGTERM (docs/deploy.md, section 4),
    so the streams must end before it. First `settle_s` for the Service's endpoints to drop the pod (no new
    requests after that), then until llama_semantic's gauges (pending and active, every instance) read zero
    twice in a row, at most `limit_s`. True when drained; a server without metrics has nothing to drain.
    """
    sleep(settle_s)
    deadline = clock() + limit_s
    idle = 0
    while True:
        try:
            with urllib.request.urlopen(metrics_url, timeout=2) as response:
                busy = sum(read_gauges(response.read().decode()).values())
        except OSError as exc:
            log(f"drain: no metrics at {metrics_url} ({exc}); stopping now")
            return True
        idle = idle + 1 if busy == 0 else 0
        if idle >= 2:  # twice: the last chunk's decode follows the LM's end
            log("drain: no request in flight")
            return True
        if clock() >= deadline:
            log(f"drain: {busy:.0f} requests still in flight after {limit_s:.0f} s; stopping anyway")
            return False
        sleep(poll_s)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if env is None else env
    if args[:1] in (["-h"], ["--help"]):
        print(f"usage: {Path(__file__).name} [--check | --dry-run | --drain | -h | TRITONSERVER_ARG ...]\n")
        print(__doc__.strip())
        return 0
    if args[:1] == ["--check"]:
        problems = self_check()
        for problem in problems:
            log(f"check failed: {problem}")
        return 1 if problems else 0
    try:
        settings = Settings.from_env(env)
        if args[:1] == ["--drain"]:
            drain(f"http://127.0.0.1:{settings.metrics_port}/metrics", settings.drain_secs)
            return 0
        if args[:1] == ["--dry-run"]:
            print(json.dumps({k: str(v) for k, v in asdict(settings).items()}, indent=2))
            print(shlex.join(build_command(settings, settings.repository)))
            print(shlex.join(server_command(settings, args[1:])))
            return 0
        if settings.prebuilt_repository is None:
            ensure_checkpoint(settings)
            with contextlib.suppress(OSError):  # a read-only volume may hold it already, or not need it
                settings.references_dir.mkdir(parents=True, exist_ok=True)
            build_repository(settings)
        else:
            log(f"serving the prebuilt repository {settings.prebuilt_repository}")
    except EntrypointError as exc:
        log(f"error: {exc}")
        return EXIT_CONFIG
    command = server_command(settings, args)
    log(f"exec {shlex.join(command)}")
    os.execvp(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    # Until execvp: it resets a handled signal to its default, so tritonserver sets up its own handling.
    for _signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(_signal, _stop)
    sys.exit(main())
