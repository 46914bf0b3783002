"""A real tritonserver on free local ports, serving a repository built from a small random checkpoint.

Registered as a pytest plugin by conftest.py; the server starts once per test session, on first use.
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from lm_support import faithful_codes

from client.triton_stream import collect
from export.build_repository import RepositoryOptions, build_repository
from fish_speech_triton.audio import save_wav, synthetic_speech
from fish_speech_triton.lm.checkpoint import load_lm
from fish_speech_triton.lm.generation import SamplingParams
from fish_speech_triton.serving.lm_metrics import ACTIVE, PENDING, read_gauges
from fish_speech_triton.tools.make_random_checkpoint import RandomCheckpoint, write_random_checkpoint
from fish_speech_triton.triton_server import TritonServer

KV_SLOTS = 4
FIRST_CHUNK_FRAMES = 4
STREAM_CHUNK_FRAMES = 8
STORED_VOICE = "alice"
STORED_VOICE_TEXT = "This is how Alice sounds."
# A greedy request that never samples <|im_end|> from the small random model (checked by `long_inputs`):
# LONG_FRAMES frames take the server seconds (about 7 ms a frame alone on a 2-core CPU).
LONG_TEXT = "Go on for a long time."
LONG_FRAMES = 400


@dataclass
class TritonDeployment:
    server: TritonServer
    checkpoint: RandomCheckpoint
    repository: Path
    references_dir: Path

    @property
    def grpc_url(self) -> str:
        return self.server.grpc_url

    @property
    def http_url(self) -> str:
        return self.server.http_url


@pytest.fixture(scope="session")
def triton_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> RandomCheckpoint:
    return write_random_checkpoint(tmp_path_factory.mktemp("triton-ckpt"), "small", seed=0)


@pytest.fixture(scope="session")
def triton_deployment(tmp_path_factory: pytest.TempPathFactory, triton_checkpoint: RandomCheckpoint):
    root = tmp_path_factory.mktemp("triton")
    references = root / "references"
    voice = references / STORED_VOICE
    voice.mkdir(parents=True)
    save_wav(voice / "sample.wav", synthetic_speech(1.5, 22050, seed=1), 22050)
    (voice / "sample.lab").write_text(STORED_VOICE_TEXT)
    repository = build_repository(
        RepositoryOptions(
            llama_checkpoint=triton_checkpoint.lm_dir,
            decoder_checkpoint=triton_checkpoint.codec_path,
            decoder_config_name=None,
            decoder_config=triton_checkpoint.codec_config,
            output_dir=root / "model_repository",
            kv_slots=KV_SLOTS,
            first_chunk_frames=FIRST_CHUNK_FRAMES,
            stream_chunk_frames=STREAM_CHUNK_FRAMES,
            references_dir=references,
            codec_threads=1,
            torch_threads=1,
        )
    )
    server = TritonServer(repository, log_file=root / "tritonserver.log")
    try:
        server.start(timeout_s=300)
    except Exception:
        log = (root / "tritonserver.log").read_text(errors="replace")[-4000:]
        pytest.fail(f"tritonserver did not start; end of its log:\n{log}")
    yield TritonDeployment(server, triton_checkpoint, repository, references)
    server.stop()


# --- helpers of the tests against the server -----------------------------------------------------------------------

GREEDY = {"TOP_P": 1e-6, "REPETITION_PENALTY": 1.3, "MAX_NEW_TOKENS": 20}


def greedy_inputs(text: str, **extra) -> dict[str, object]:
    inputs: dict[str, object] = {"TEXT": text}
    inputs["TOP_P"] = np.array([GREEDY["TOP_P"]], dtype=np.float32)
    inputs["REPETITION_PENALTY"] = np.array([GREEDY["REPETITION_PENALTY"]], dtype=np.float32)
    inputs["MAX_NEW_TOKENS"] = np.array([GREEDY["MAX_NEW_TOKENS"]], dtype=np.int32)
    inputs["SEED"] = np.array([1], dtype=np.int64)
    inputs.update(extra)
    return inputs


def offline_codes(lm, text: str, references=()) -> np.ndarray:
    """The faithful loop's codes for `greedy_inputs(text)` (same sampling settings and seed)."""
    params = SamplingParams(
        top_p=GREEDY["TOP_P"],
        repetition_penalty=GREEDY["REPETITION_PENALTY"],
        max_new_tokens=GREEDY["MAX_NEW_TOKENS"],
    )
    return faithful_codes(lm, text, params, seed=1, references=references)


def semantic_codes(client, inputs) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Codes of a llama_semantic stream with the context stripped, and (new frames, context) per chunk."""
    result = collect(client, "llama_semantic", inputs, ("CODES", "CONTEXT_FRAMES"))
    parts, layout = [], []
    for chunk in result.chunks:
        context = int(chunk["CONTEXT_FRAMES"][0])
        parts.append(chunk["CODES"][:, context:])
        layout.append((chunk["CODES"].shape[1] - context, context))
    return np.concatenate(parts, axis=1), layout


def lm_gauges(server: TritonServer) -> tuple[int, int]:
    """(pending requests, active sequences) as llama_semantic exports them on Triton's metrics endpoint."""
    url = f"http://{server.host}:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        gauges = read_gauges(response.read().decode())
    values = []
    for name in (PENDING, ACTIVE):
        assert (name, "llama_semantic_0_0") in gauges, f"{name} of llama_semantic_0_0 is not exported"
        values.append(int(gauges[(name, "llama_semantic_0_0")]))
    return values[0], values[1]


def wait_for_gauges(server: TritonServer, pending: int, active: int, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while (seen := lm_gauges(server)) != (pending, active):
        assert time.monotonic() < deadline, (
            f"(pending, active) is {seen} after {within_s} s, not {(pending, active)}"
        )
        time.sleep(0.01)


@pytest.fixture(scope="session")
def long_inputs(triton_checkpoint: RandomCheckpoint) -> dict[str, object]:
    """Inputs of a request that runs to its frame limit unless cancelled (checked offline: ~3 s)."""
    params = SamplingParams(
        top_p=GREEDY["TOP_P"], repetition_penalty=GREEDY["REPETITION_PENALTY"], max_new_tokens=LONG_FRAMES
    )
    lm = load_lm(triton_checkpoint.lm_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads crawl on a busy 2-core machine
    try:
        frames = faithful_codes(lm, LONG_TEXT, params, seed=1).shape[1]
    finally:
        torch.set_num_threads(threads)
    assert frames == LONG_FRAMES, f"it stops by itself after {frames} frames"
    return greedy_inputs(LONG_TEXT, MAX_NEW_TOKENS=np.array([LONG_FRAMES], np.int32))
