"""End to end against a real tritonserver: every model of the repository, streaming, concurrency, bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf
import torch
import tritonclient.grpc as grpcclient
from triton_fixtures import (
    FIRST_CHUNK_FRAMES,
    GREEDY,
    KV_SLOTS,
    STREAM_CHUNK_FRAMES,
    greedy_inputs,
    offline_codes,
    semantic_codes,
    wait_for_gauges,
)

from client.triton_stream import RequestRefused, collect, infer, make_input, stream
from fish_speech_triton.audio import save_wav, synthetic_speech
from fish_speech_triton.codec.checkpoint import load_codec
from fish_speech_triton.codec.config import load_codec_config
from fish_speech_triton.lm.checkpoint import load_lm
from fish_speech_triton.lm.prompt import Reference

# How soon a cancelled request's slot must be free: a few decode steps, far below the ~3 s the request
# would still decode for.
CANCEL_DEADLINE_S = 1.0


@pytest.fixture(scope="module")
def client(triton_deployment):
    return grpcclient.InferenceServerClient(triton_deployment.grpc_url)


@pytest.fixture(scope="module")
def codec(triton_deployment):
    ckpt = triton_deployment.checkpoint
    return load_codec(ckpt.codec_path, load_codec_config(None, ckpt.codec_config))


@pytest.fixture(scope="module")
def lm(triton_deployment):
    return load_lm(triton_deployment.checkpoint.lm_dir)


def encoder_runs(client) -> int:
    """Requests vqgan_encoder has served so far (BLS calls from llama_semantic included)."""
    stats = client.get_inference_statistics("vqgan_encoder")
    return sum(model.inference_stats.success.count for model in stats.model_stats)


def offline_audio(codec, codes: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return codec.decode(torch.from_numpy(codes.astype(np.int64))[None])[0, 0].numpy()


# ---------------------------------------------------------------------------------------------- stages


def test_encoder_codes_match_pytorch(client, codec):
    audio = synthetic_speech(2.0, 44100, seed=4)
    codes = infer(client, "vqgan_encoder", {"AUDIO": audio}, ("CODES",))["CODES"]
    with torch.inference_mode():
        expected, _ = codec.encode(torch.from_numpy(audio)[None, None])
    mel_frames = audio.size // 512  # spec 1.2; codes: ceil(ceil(M / 2) / 2)
    assert codes.dtype == np.int32 and codes.shape == (8, math.ceil(math.ceil(mel_frames / 2) / 2))
    assert (codes == expected[0].numpy()).mean() >= 0.999


def test_encoder_resamples_and_returns_empty_codes_without_audio(client):
    audio = synthetic_speech(1.0, 16000, seed=2)
    rate = np.array([16000], dtype=np.int32)
    codes = infer(client, "vqgan_encoder", {"AUDIO": audio, "SAMPLE_RATE": rate}, ("CODES",))["CODES"]
    assert codes.shape == (8, 22)  # 44100 samples -> 86 mel frames -> 22 code frames
    empty = infer(client, "vqgan_encoder", {"SAMPLE_RATE": rate}, ("CODES",))["CODES"]
    assert empty.shape == (8, 0)


def test_decoder_audio_matches_pytorch_and_honours_context(client, codec):
    codes = np.random.default_rng(0).integers(0, 1000, (8, 30)).astype(np.int32)
    audio = infer(client, "vqgan_decoder", {"CODES": codes}, ("AUDIO",))["AUDIO"]
    expected = offline_audio(codec, codes)
    assert audio.shape == (30 * 2048,)
    np.testing.assert_allclose(audio, expected, atol=1e-4)
    tail = infer(
        client, "vqgan_decoder", {"CODES": codes, "CONTEXT_FRAMES": np.array([16], np.int32)}, ("AUDIO",)
    )["AUDIO"]
    np.testing.assert_allclose(tail, expected[16 * 2048 :], atol=1e-4)


def test_llama_semantic_greedy_codes_equal_offline_generation(client, lm):
    text = "Hello from Triton, this is a test."
    codes, layout = semantic_codes(client, greedy_inputs(text))
    np.testing.assert_array_equal(codes, offline_codes(lm, text))
    assert layout[0] == (FIRST_CHUNK_FRAMES, 0)
    assert all(context == min(16, sum(n for n, _ in layout[:i])) for i, (_, context) in enumerate(layout))
    assert all(n == STREAM_CHUNK_FRAMES for n, _ in layout[1:-1])


def test_llama_semantic_with_reference_codes(client, lm):
    ref_codes = np.random.default_rng(5).integers(0, 1000, (8, 10)).astype(np.int32)
    ref_text = "The reference transcript."
    inputs = greedy_inputs("Say this with the voice.", REFERENCE_CODES=ref_codes, REFERENCE_TEXT=ref_text)
    codes, _ = semantic_codes(client, inputs)
    reference = Reference(ref_text, torch.from_numpy(ref_codes).long())
    np.testing.assert_array_equal(codes, offline_codes(lm, "Say this with the voice.", (reference,)))


def test_llama_semantic_equals_the_offline_text2semantic_tool(client, triton_deployment, tmp_path):
    """The same greedy request through Triton and through the offline command line gives the same codes."""
    text = "The offline tool and the server agree."
    ref_codes = np.random.default_rng(6).integers(0, 1000, (8, 9)).astype(np.int32)
    np.save(tmp_path / "ref.npy", ref_codes)
    # chunk_length 200 on both sides: the tool's default is the original CLI's 100, the server's the API's 200
    subprocess.run(
        [sys.executable, "-m", "fish_speech_triton.tools.text2semantic", "--text", text,
         "--prompt-text", "The reference.", "--prompt-tokens", str(tmp_path / "ref.npy"),
         "--checkpoint-path", str(triton_deployment.checkpoint.lm_dir), "--device", "cpu", "--precision", "fp32",
         "--top-p", str(GREEDY["TOP_P"]), "--repetition-penalty", str(GREEDY["REPETITION_PENALTY"]),
         "--max-new-tokens", str(GREEDY["MAX_NEW_TOKENS"]), "--chunk-length", "200", "--seed", "1",
         "--output-dir", str(tmp_path)],
        check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    offline = np.load(tmp_path / "codes_0.npy")
    inputs = greedy_inputs(text, REFERENCE_CODES=ref_codes, REFERENCE_TEXT="The reference.")
    served, _ = semantic_codes(client, inputs)
    assert offline.dtype == np.int32
    np.testing.assert_array_equal(served, offline)


# ---------------------------------------------------------------------------------------------- ensemble


def test_ensemble_streams_audio_equal_to_offline_decode(client, codec, lm):
    text = "Streaming audio must be exact."
    result = collect(client, "ensemble", greedy_inputs(text), ("AUDIO",))
    assert len(result.chunks) >= 2
    audio = result.concatenated("AUDIO")
    codes = offline_codes(lm, text)
    np.testing.assert_allclose(audio, offline_audio(codec, codes), atol=1e-4)


def test_ensemble_with_reference_audio(client, codec, lm):
    ref_audio = synthetic_speech(1.2, 24000, seed=9)
    inputs = greedy_inputs(
        "Clone this voice.",
        REFERENCE_AUDIO=ref_audio,
        REFERENCE_SAMPLE_RATE=np.array([24000], np.int32),
        REFERENCE_TEXT="A short reference.",
    )
    audio = collect(client, "ensemble", inputs, ("AUDIO",)).concatenated("AUDIO")
    ref_codes = infer(
        client,
        "vqgan_encoder",
        {"AUDIO": ref_audio, "SAMPLE_RATE": np.array([24000], np.int32)},
        ("CODES",),
    )["CODES"]
    reference = Reference("A short reference.", torch.tensor(ref_codes, dtype=torch.long))
    expected = offline_audio(codec, offline_codes(lm, "Clone this voice.", (reference,)))
    np.testing.assert_allclose(audio, expected, atol=1e-4)


def test_stored_reference_voice_is_encoded_once_and_cached(client, triton_deployment, codec, lm):
    # a voice of its own: alice may have been encoded already by an earlier test of the session
    folder = triton_deployment.references_dir / "encoded-once"
    folder.mkdir()
    try:
        wav = folder / "sample.wav"
        save_wav(wav, synthetic_speech(1.3, 22050, seed=12), 22050)
        (folder / "sample.lab").write_text("A voice encoded once.")
        cache = folder / "sample.wav.codes.npz"
        inputs = greedy_inputs("Speak as this voice.", REFERENCE_ID=folder.name)
        before = encoder_runs(client)
        first, _ = semantic_codes(client, inputs)
        assert encoder_runs(client) == before + 1 and cache.is_file()  # encoded at first use, cached
        written = cache.stat()
        again, _ = semantic_codes(client, inputs)
        os.utime(wav)  # the server re-checks a touched file: same bytes, so the cached codes still hold
        touched, _ = semantic_codes(client, inputs)
        assert encoder_runs(client) == before + 1, "the voice was encoded again"
        assert (cache.stat().st_mtime_ns, cache.stat().st_ino) == (written.st_mtime_ns, written.st_ino)
        audio = collect(client, "ensemble", inputs, ("AUDIO",)).concatenated("AUDIO")

        with np.load(cache) as saved:
            cached_codes = saved["codes"]
        samples, rate = sf.read(wav, dtype="float32")
        encoded = infer(
            client, "vqgan_encoder", {"AUDIO": samples, "SAMPLE_RATE": np.array([rate], np.int32)}, ("CODES",)
        )
        np.testing.assert_array_equal(cached_codes, encoded["CODES"])  # the cache holds this audio's codes
        reference = Reference("A voice encoded once.", torch.from_numpy(cached_codes).long())
        expected = offline_codes(lm, "Speak as this voice.", (reference,))
        for codes in (first, again, touched):
            np.testing.assert_array_equal(codes, expected)
        np.testing.assert_allclose(audio, offline_audio(codec, expected), atol=1e-4)
    finally:
        shutil.rmtree(folder)


def test_http_generate_stream(triton_deployment, codec, lm):
    text = "Over HTTP too."
    body = {
        "TEXT": text,
        "TOP_P": GREEDY["TOP_P"],
        "REPETITION_PENALTY": GREEDY["REPETITION_PENALTY"],
        "MAX_NEW_TOKENS": GREEDY["MAX_NEW_TOKENS"],
        "SEED": 1,
    }
    request = urllib.request.Request(
        f"http://{triton_deployment.http_url}/v2/models/ensemble/generate_stream",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    chunks = []
    with urllib.request.urlopen(request, timeout=120) as response:
        for line in response:
            if line.startswith(b"data:"):
                event = json.loads(line[5:])
                assert "error" not in event, event
                chunks.append(np.asarray(event["AUDIO"], dtype=np.float32))
    audio = np.concatenate(chunks)
    np.testing.assert_allclose(audio, offline_audio(codec, offline_codes(lm, text)), atol=1e-4)


# ---------------------------------------------------------------------------------------------- concurrency


def test_eight_concurrent_streams_each_equal_their_solo_result(client, triton_deployment):
    requests = [
        greedy_inputs(
            f"Request number {i} speaks.", REPETITION_PENALTY=np.array([1.0 + 0.1 * (i % 4)], np.float32)
        )
        for i in range(8)
    ]

    def run(inputs):
        own = grpcclient.InferenceServerClient(triton_deployment.grpc_url)
        return semantic_codes(own, inputs)[0]

    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(run, requests))
    for inputs, codes in zip(requests, together, strict=True):
        np.testing.assert_array_equal(codes, run(inputs))


def test_cancelled_stream_frees_its_slot(client, triton_deployment, long_inputs):
    for _ in range(KV_SLOTS + 1):  # more cancellations than slots: a leaked slot would block the last request
        gen = stream(client, "llama_semantic", long_inputs, ("CODES",))
        next(gen)
        gen.close()  # cancels the request on the server
    # each request would decode for seconds more: cancelled, its slot is free within a few steps
    wait_for_gauges(triton_deployment.server, pending=0, active=0, within_s=CANCEL_DEADLINE_S)
    codes, _ = semantic_codes(client, greedy_inputs("Still served."))
    assert codes.shape[1] > 0


# ---------------------------------------------------------------------------------------------- bad input

BAD_REQUESTS = [
    ("vqgan_encoder", {"AUDIO": np.zeros(0, np.float32)}, "empty"),
    ("vqgan_encoder", {"AUDIO": np.zeros(300, np.float32)}, "too short"),
    ("vqgan_encoder", {"AUDIO": np.full(5000, np.nan, np.float32)}, "NaN"),
    (
        "vqgan_encoder",
        {"AUDIO": np.zeros(5000, np.float32), "SAMPLE_RATE": np.array([1000], np.int32)},
        "sample rate",
    ),
    ("vqgan_encoder", {"AUDIO": np.full(5000, 12000.0, np.float32)}, "divide them by 32768"),
    ("vqgan_decoder", {"CODES": np.full((8, 4), 5000, np.int32)}, "out of range"),
    ("vqgan_decoder", {"CODES": np.zeros((8, 21601), np.int32)}, "max_frames"),
    (
        "vqgan_decoder",
        {"CODES": np.zeros((8, 4), np.int32), "CONTEXT_FRAMES": np.array([9], np.int32)},
        "context",
    ),
    ("llama_semantic", {"TEXT": "   "}, "empty"),
    ("llama_semantic", {"REFERENCE_ID": "nobody"}, "TEXT is missing"),
    ("ensemble", {"REFERENCE_TEXT": "x", "REFERENCE_AUDIO": np.zeros(44100, np.float32)}, "TEXT is missing"),
    ("vqgan_decoder", {"CONTEXT_FRAMES": np.array([0], np.int32)}, "CODES is missing"),
    ("llama_semantic", {"TEXT": b"\xff\xfe bad utf8"}, "UTF-8"),
    ("llama_semantic", {"TEXT": "hi", "REFERENCE_TEXT": "no audio"}, "without reference"),
    (
        "llama_semantic",
        {"TEXT": "hi", "REFERENCE_CODES": np.full((8, 3), 4096, np.int32), "REFERENCE_TEXT": "x"},
        "REFERENCE_CODES",
    ),
    ("llama_semantic", {"TEXT": "hi", "REFERENCE_ID": "../etc"}, "invalid reference id"),
    ("llama_semantic", {"TEXT": "hi", "REFERENCE_ID": "/abs"}, "invalid reference id"),
    ("llama_semantic", {"TEXT": "hi", "REFERENCE_ID": "nobody"}, "unknown reference id"),
    ("llama_semantic", {"TEXT": "hi", "TOP_P": np.array([0.0], np.float32)}, "top_p"),
    ("llama_semantic", {"TEXT": "hi", "TEMPERATURE": np.array([2.5], np.float32)}, "temperature"),
    (
        "llama_semantic",
        {"TEXT": "hi", "REPETITION_PENALTY": np.array([np.nan], np.float32)},
        "repetition_penalty",
    ),
    ("llama_semantic", {"TEXT": "word " * 3000, "CHUNK_LENGTH": np.array([1000], np.int32)}, "holds at most"),
    ("llama_semantic", {"TEXT": "hi", "CHUNK_LENGTH": np.array([1], np.int32)}, "CHUNK_LENGTH must be in"),
    ("llama_semantic", {"TEXT": "word " * 20_001}, "TEXT is 100005 bytes: at most 100000"),
    ("llama_semantic", {"TEXT": "a\x00b. c"}, "text contains a NUL character \\(at 1\\)"),
    (
        "ensemble",
        {"TEXT": "hi", "REFERENCE_AUDIO": np.zeros(100, np.float32), "REFERENCE_TEXT": "x"},
        "too short",
    ),
]


@pytest.mark.parametrize(
    ("model", "inputs", "message"), BAD_REQUESTS, ids=[f"{m}-{msg}" for m, _, msg in BAD_REQUESTS]
)
def test_bad_input_is_an_error_while_good_requests_go_on(client, triton_deployment, model, inputs, message):
    good_result: list[np.ndarray] = []

    def good():
        own = grpcclient.InferenceServerClient(triton_deployment.grpc_url)
        good_result.append(semantic_codes(own, greedy_inputs("A good request runs alongside."))[0])

    worker = threading.Thread(target=good)
    worker.start()
    for _ in range(2):  # sent again, refused again: no refusal is cached as an answer
        with pytest.raises(RequestRefused, match=message) as refused:  # the input's fault, not a failure
            if model in ("llama_semantic", "ensemble"):
                collect(client, model, inputs, ("CODES", "AUDIO"))
            else:
                infer(client, model, inputs, ("CODES", "AUDIO"))
        assert "refused: " in str(refused.value)
    worker.join(120)
    assert good_result and good_result[0].shape[1] > 0


def test_engine_load_is_exported_as_prometheus_gauges(triton_deployment, long_inputs):
    clients = [grpcclient.InferenceServerClient(triton_deployment.grpc_url) for _ in range(KV_SLOTS + 1)]
    streams = [stream(own, "llama_semantic", long_inputs, ("CODES",)) for own in clients[:KV_SLOTS]]
    queued = clients[-1]
    try:
        wait_for_gauges(
            triton_deployment.server, pending=0, active=0, within_s=30
        )  # nothing left from other tests
        for gen in streams:  # every KV-cache slot decodes a long request
            next(gen)
        wait_for_gauges(triton_deployment.server, pending=0, active=KV_SLOTS, within_s=5)
        queued.start_stream(callback=lambda result, error: None)  # one more: it waits for a slot
        tensors = [make_input(name, value) for name, value in long_inputs.items()]
        queued.async_stream_infer("llama_semantic", tensors, enable_empty_final_response=True)
        wait_for_gauges(triton_deployment.server, pending=1, active=KV_SLOTS, within_s=5)
    finally:
        for gen in streams:
            gen.close()
        queued.stop_stream(cancel_requests=True)
    wait_for_gauges(triton_deployment.server, pending=0, active=0, within_s=CANCEL_DEADLINE_S)
    for own in clients:
        own.close()
