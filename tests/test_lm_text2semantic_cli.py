"""`python -m fish_speech_triton.tools.text2semantic`: outputs, seeding, and one-line errors with exit code 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fish_speech_triton.audio import save_wav
from fish_speech_triton.lm.checkpoint import load_lm
from fish_speech_triton.lm.generation import SamplingParams
from fish_speech_triton.lm.long_form import generate_long
from fish_speech_triton.lm.prompt import Reference

TEXT = "Hello world. This text is long enough to be split into two segments."


def _run(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("FISH_SPEECH_TRITON_DEBUG", None)
    command = [sys.executable, "-m", "fish_speech_triton.tools.text2semantic", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def prompt_tokens(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompt") / "fake.npy"
    np.save(path, np.random.default_rng(0).integers(0, 1000, (8, 12)).astype(np.int32))
    return path


def test_writes_one_codes_file_per_sample(lm_small_checkpoint, prompt_tokens, tmp_path):
    result = _run(
        "--text", TEXT, "--prompt-text", "A reference.", "--prompt-tokens", prompt_tokens,
        "--checkpoint-path", lm_small_checkpoint, "--max-new-tokens", "6", "--chunk-length", "40",
        "--num-samples", "2", "--output-dir", tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "frames/s" in result.stderr
    for sample in range(2):
        codes = np.load(tmp_path / f"codes_{sample}.npy")
        assert codes.dtype == np.int32 and codes.shape[0] == 8 and 0 < codes.shape[1] <= 12
    assert not (tmp_path / "codes_2.npy").exists()


def test_seed_reproduces_the_library_result(lm_small_checkpoint, prompt_tokens, tmp_path, lm_single_thread):
    result = _run(
        "--text", TEXT, "--prompt-text", "A reference.", "--prompt-tokens", prompt_tokens,
        "--checkpoint-path", lm_small_checkpoint, "--max-new-tokens", "8", "--chunk-length", "40",
        "--precision", "fp32", "--seed", "7", "--output-dir", tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    model, tokenizer = load_lm(lm_small_checkpoint)
    model.setup_caches(1)
    reference = Reference.create("A reference.", np.load(prompt_tokens), 8, 1024)
    expected = generate_long(
        model,
        tokenizer,
        TEXT,
        references=[reference],
        params=SamplingParams(max_new_tokens=8),
        generator=torch.Generator().manual_seed(7),
        chunk_length=40,
    )
    assert np.array_equal(np.load(tmp_path / "codes_0.npy"), expected.numpy())


@pytest.fixture(scope="module")
def bad_tokens(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompt") / "bad.npy"
    np.save(path, np.zeros((4, 10), dtype=np.int32))
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_checkpoint", "checkpoint not found"),
        ("wrong_shape", r"must have shape \[8, frames\], got \[4, 10\]"),
        ("empty_text", "empty"),
        ("mismatched_counts", "2 --prompt-text and 1 --prompt-tokens"),
        ("bad_top_p", "top_p"),
        ("device_without_cuda", "device 'cuda:0' was asked for but CUDA is not available here"),
        ("unknown_device", "unknown device 'tpu'"),
        ("audio_as_tokens", r"prompt tokens .*ref.wav is not a .npy array .*encoded to codes first"),
        ("npz_as_tokens", r"prompt tokens .*codes.npy is a .npz archive, not a .npy array"),
        ("output_dir_is_a_file", "--output-dir .*cannot write in"),
    ],
)
def test_bad_input_is_one_error_line(lm_small_checkpoint, prompt_tokens, bad_tokens, tmp_path, case, message):
    checkpoint = ["--checkpoint-path", lm_small_checkpoint]
    args = {
        "missing_checkpoint": ["--text", "Hi.", "--checkpoint-path", tmp_path / "nowhere"],
        "wrong_shape": ["--text", "Hi.", *checkpoint, "--prompt-text", "x", "--prompt-tokens", bad_tokens],
        "empty_text": ["--text", "  \U0001f600 ", *checkpoint],
        "mismatched_counts": [
            "--text", "Hi.", *checkpoint, "--prompt-text", "a", "--prompt-text", "b", "--prompt-tokens", prompt_tokens,
        ],
        "bad_top_p": ["--text", "Hi.", *checkpoint, "--top-p", "1.5"],
        "device_without_cuda": ["--text", "Hi.", *checkpoint, "--device", "cuda:0"],
        "unknown_device": ["--text", "Hi.", *checkpoint, "--device", "tpu"],
        "audio_as_tokens": ["--text", "Hi.", *checkpoint, "--prompt-text", "x", "--prompt-tokens", tmp_path / "ref.wav"],
        "npz_as_tokens": ["--text", "Hi.", *checkpoint, "--prompt-text", "x", "--prompt-tokens", tmp_path / "codes.npy"],
        "output_dir_is_a_file": ["--text", "Hi.", *checkpoint, "--output-dir", tmp_path / "taken" / "out"],
    }[case]  # fmt: skip
    if case == "device_without_cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    save_wav(tmp_path / "ref.wav", np.zeros(4410, np.float32), 44100)
    with open(tmp_path / "codes.npy", "wb") as archive:  # np.savez under a .npy name
        np.savez(archive, codes=np.zeros((8, 4), np.int32))
    (tmp_path / "taken").write_text("a file where the output folder's parent should be")
    result = _run(*args, "--output-dir", tmp_path / "out") if "--output-dir" not in args else _run(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(message, lines[0])
    assert not (tmp_path / "out" / "codes_0.npy").exists()


def test_a_seed_beyond_64_bits_is_refused_by_the_parser(tmp_path):
    result = _run("--text", "Hi.", "--seed", str(2**64), "--output-dir", tmp_path)
    assert result.returncode == 2 and "does not fit a signed 64-bit integer" in result.stderr
    assert "Traceback" not in result.stderr
