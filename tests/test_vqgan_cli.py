"""The vqgan tool end to end (subprocesses): audio -> codes + reconstruction, codes -> audio, clear errors."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fish_speech_triton.audio import synthetic_speech


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "fish_speech_triton.tools.vqgan", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see conftest.codec_one_thread
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, env=env)


@pytest.fixture(scope="module")
def codec_cli_args(codec_small_checkpoint: Path, codec_small_config_file: Path) -> list[str | Path]:
    return [
        "--checkpoint-path",
        codec_small_checkpoint,
        "--config",
        codec_small_config_file,
        "--device",
        "cpu",
    ]


def test_audio_to_codes_and_back(tmp_path: Path, codec_cli_args: list) -> None:
    sf.write(tmp_path / "ref.wav", synthetic_speech(1.5, sample_rate=24000), 24000)
    done = _run("-i", tmp_path / "ref.wav", "-o", tmp_path / "out" / "fake.wav", *codec_cli_args)
    assert done.returncode == 0, done.stderr
    codes = np.load(tmp_path / "out" / "fake.npy")
    frames = math.ceil(math.ceil((66150 // 512) / 2) / 2)  # 1.5 s at 44.1 kHz
    assert codes.dtype == np.int32 and codes.shape == (8, frames) and codes.min() >= 0 and codes.max() < 1000
    audio, sr = sf.read(tmp_path / "out" / "fake.wav")
    assert sr == 44100 and audio.shape == (frames * 2048,)
    assert "encoded" in done.stderr and "decoded" in done.stderr

    done = _run("-i", tmp_path / "out" / "fake.npy", "-o", tmp_path / "again.wav", *codec_cli_args)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(sf.read(tmp_path / "again.wav")[0], audio)
    assert not (tmp_path / "again.npy").exists()


def _bad_npy(tmp_path: Path, name: str, array: np.ndarray) -> Path:
    np.save(tmp_path / name, array)
    return tmp_path / name


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda d: d / "absent.wav", "input file not found"),
        (lambda d: (d / "junk.wav").write_text("no audio here") and d / "junk.wav", "cannot read audio file"),
        (
            lambda d: _bad_npy(d, "rows.npy", np.zeros((7, 10), np.int32)),
            r"must have shape \[8, frames>0\], got \[7, 10\]",
        ),
        (lambda d: _bad_npy(d, "flat.npy", np.zeros(80, np.int32)), "must have shape"),
        (lambda d: _bad_npy(d, "float.npy", np.zeros((8, 10), np.float32)), "must be integers"),
        (lambda d: _bad_npy(d, "range.npy", np.full((8, 10), 1024, np.int64)), r"must be in \[0, 1024\)"),
        (lambda d: (d / "text.npy").write_text("nope") and d / "text.npy", "is not a .npy array"),
        (lambda d: _nan_wav(d / "nan.wav"), r"nan.wav holds samples that are not finite numbers"),
    ],
)
def test_bad_inputs_give_one_error_line(
    tmp_path: Path, codec_cli_args: list, make_input, message: str
) -> None:
    done = _run("-i", make_input(tmp_path), "-o", tmp_path / "x.wav", *codec_cli_args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "x.wav").exists()  # nothing half done


def _nan_wav(path: Path) -> Path:
    sf.write(path, np.full(4410, np.nan, np.float32), 44100, subtype="FLOAT")
    return path


def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path: Path, codec_cli_args: list):
    sf.write(tmp_path / "ref.wav", synthetic_speech(0.5, sample_rate=44100), 44100)
    (tmp_path / "taken.wav").mkdir()  # a folder with the output's name
    done = _run("-i", tmp_path / "ref.wav", "-o", tmp_path / "taken.wav", *codec_cli_args)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: --output {tmp_path / 'taken.wav'} is a folder, not a file"
    ]
    assert not (tmp_path / "taken.npy").exists()  # the codes were not written either


def test_bad_checkpoint_and_help(tmp_path: Path, codec_small_config_file: Path) -> None:
    np.save(tmp_path / "codes.npy", np.zeros((8, 4), np.int32))
    done = _run(
        "-i",
        tmp_path / "codes.npy",
        "--checkpoint-path",
        tmp_path / "none.pth",
        "--config",
        codec_small_config_file,
    )
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith(
        "error: checkpoint not found"
    )
    assert "Traceback" not in done.stderr
    done = _run("--help")
    assert done.returncode == 0 and "--checkpoint-path" in done.stdout and ".npy" in done.stdout
