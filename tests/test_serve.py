"""`fish_speech_triton.serve` as the demo script runs it: a background job, stopped with SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fish_speech_triton.triton_server import free_port

ROOT = Path(__file__).resolve().parents[1]


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_demo_server_starts_serves_and_stops_on_sigterm_even_with_sigint_ignored(tmp_path):
    http, grpc, metrics = free_port(), free_port(), free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    log = tmp_path / "serve.log"  # a file, not a pipe: a pipe read only at the end blocks serve past 64 KiB
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "fish_speech_triton.serve", "--demo", "--model-repository", "repo",
             "--listen", f"127.0.0.1:{http}", "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
            cwd=tmp_path, env=env, stdout=output, stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as `cmd &` in a script
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not ready(http):
            assert process.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(1)
        assert (tmp_path / "references").is_dir() and not (tmp_path / "repo" / "references").exists()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        output = log.read_text(errors="replace")
        assert "RANDOM checkpoint" in output and output.rstrip().endswith("interrupted")
        assert not ready(http), "tritonserver still answers after serve exited"
    finally:
        if process.poll() is None:
            process.kill()


def test_a_repository_is_reused_only_when_built_with_these_options_by_this_code(tmp_path, monkeypatch):
    from export.build_repository import RepositoryOptions
    from fish_speech_triton import serve

    builds = []
    monkeypatch.setattr(serve, "build_repository", lambda opts: builds.append(opts))
    opts = RepositoryOptions(tmp_path / "lm", tmp_path / "codec.pth", tmp_path / "repo")
    opts.output_dir.mkdir()
    for _ in range(2):
        serve.ensure_repository(opts)
    assert len(builds) == 1  # built once, then reused
    serve.ensure_repository(
        RepositoryOptions(tmp_path / "lm", tmp_path / "codec.pth", tmp_path / "repo", kv_slots=3)
    )
    assert len(builds) == 2  # other options
    template = tmp_path / "app" / "model_repository" / "m" / "config.pbtxt"
    template.parent.mkdir(parents=True)
    (tmp_path / "app" / "export").mkdir()
    template.write_text("a")
    monkeypatch.setattr(serve.export, "__file__", str(tmp_path / "app" / "export" / "__init__.py"))
    serve.ensure_repository(opts)
    serve.ensure_repository(opts)
    assert len(builds) == 3  # other builder code: rebuilt, then reused
    template.write_text("b")
    serve.ensure_repository(opts)
    assert len(builds) == 4  # a changed template
    (tmp_path / "codec.pth").write_bytes(b"weights")
    serve.ensure_repository(opts)
    serve.ensure_repository(opts)
    assert len(builds) == 5  # another checkpoint file: rebuilt, then reused
    (tmp_path / "codec.pth").write_bytes(b"other weights")
    serve.ensure_repository(opts)
    assert len(builds) == 6


def test_demo_with_checkpoint_paths_is_refused(tmp_path, capsys):
    from fish_speech_triton import serve
    from fish_speech_triton.tools.cli import run_cli

    code = run_cli(serve.main, ["--demo", "--llama-checkpoint-path", str(tmp_path)])
    assert code == 2 and "--demo serves a random checkpoint of its own" in capsys.readouterr().err


def test_random_checkpoints_never_overwrite_real_weights_nor_pass_half_written(tmp_path, monkeypatch):
    from fish_speech_triton.errors import InputError
    from fish_speech_triton.tools import make_random_checkpoint as random_checkpoint

    real = tmp_path / "real"
    real.mkdir()
    (real / "model.pth").write_text("real weights")
    with pytest.raises(InputError, match="already holds model.pth, not written by this tool"):
        random_checkpoint.write_random_checkpoint(real)
    assert (real / "model.pth").read_text() == "real weights"

    ours = tmp_path / "ours"
    random_checkpoint.write_random_checkpoint(ours, seed=0)
    first = (ours / "model.pth").read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("fish_speech_triton.codec.checkpoint.write_random_codec_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):  # the LM of seed 1 is written, then the codec's write stops
        random_checkpoint.write_random_checkpoint(ours, seed=1)
    monkeypatch.undo()
    assert (ours / "model.pth").read_bytes() != first
    random_checkpoint.write_random_checkpoint(ours, seed=0)  # rewritten, not taken as done
    assert (ours / "model.pth").read_bytes() == first


def test_an_interrupted_start_stops_tritonserver_and_removes_its_scratch_directory(tmp_path, monkeypatch):
    from fish_speech_triton.triton_server import TritonServer

    seen = {}

    def interrupted(self, timeout_s):  # Ctrl-C while the models load
        seen.update(process=self.process, scratch=self._scratch, group=os.getpgid(self.process.pid))
        raise KeyboardInterrupt

    monkeypatch.setattr(TritonServer, "wait_ready", interrupted)
    (tmp_path / "repo").mkdir()
    server = TritonServer(tmp_path / "repo", log_file=tmp_path / "tritonserver.log")
    try:
        with pytest.raises(KeyboardInterrupt):
            server.start()
        assert seen["process"].poll() is not None, "tritonserver still runs"
        assert not seen["scratch"].exists()
        assert seen["group"] == seen["process"].pid  # its own group: a terminal's Ctrl-C reaches only us
    finally:
        if seen and seen["process"].poll() is None:
            seen["process"].kill()
            seen["process"].wait()
        if seen:
            shutil.rmtree(seen["scratch"], ignore_errors=True)


@pytest.mark.parametrize("server_on_sigterm", ["exits", "stays", "exited-before"])
def test_stop_leaves_nothing_of_the_server_s_process_group(tmp_path, server_on_sigterm):
    from fish_speech_triton.triton_server import TritonServer

    # A server with a child of its own that stays after a SIGTERM, as the Python backend stub of a model
    # still loading does; the server itself exits on SIGTERM, ignores it too, or has exited (and been
    # reaped, as serve's wait does) before stop() is called.
    trap = "trap '' TERM; " if server_on_sigterm == "stays" else ""
    wait = "" if server_on_sigterm == "exited-before" else "wait"
    server = TritonServer(tmp_path)
    server.process = subprocess.Popen(
        ["sh", "-c", f"{trap}(trap '' TERM; exec sleep 120) & echo $! > child; {wait}"],
        cwd=tmp_path,
        start_new_session=True,
    )
    while not (tmp_path / "child").is_file() or not (tmp_path / "child").read_text().strip():
        time.sleep(0.05)
    child = int((tmp_path / "child").read_text())
    if server_on_sigterm == "exited-before":
        server.process.wait()

    def running(pid: int) -> bool:  # a zombie is gone: only its parent's wait is left
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    try:
        server.stop(timeout_s=1)
        assert server.process.poll() is not None
        deadline = time.monotonic() + 10
        while running(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(child), "the server's child outlived it"
    finally:
        if running(child):
            os.kill(child, signal.SIGKILL)


def test_a_hang_up_stops_serve_like_sigterm():
    """tritonserver runs in a session of its own: a closed terminal's SIGHUP reaches only serve, which must
    then stop it (on the way out of a KeyboardInterrupt) rather than die and leave it running."""
    code = (
        "import os, signal\n"
        "from fish_speech_triton.triton_server import stop_on_signals\n"
        "stop_on_signals()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGHUP)\n"
        "except KeyboardInterrupt:\n"
        "    print('stopping the server')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "stopping the server" in done.stdout, done.stderr
