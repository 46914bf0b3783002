"""Audio I/O: any file becomes mono float32 at the codec rate; wav output is PCM16."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fish_speech_triton.audio import load_audio, resample, save_wav, synthetic_speech
from fish_speech_triton.errors import InputError


def test_stereo_22k_becomes_mono_44k(tmp_path: Path) -> None:
    t = np.arange(22050) / 22050
    left, right = 0.4 * np.sin(2 * np.pi * 200 * t), 0.2 * np.sin(2 * np.pi * 200 * t)
    sf.write(tmp_path / "in.flac", np.stack([left, right], 1), 22050)
    audio = load_audio(tmp_path / "in.flac")
    assert audio.dtype == np.float32 and audio.shape == (44100,)
    expected = 0.3 * np.sin(2 * np.pi * 200 * np.arange(44100) / 44100)
    np.testing.assert_allclose(audio[1000:-1000], expected[1000:-1000], atol=2e-3)


def test_resample_lengths_and_identity() -> None:
    audio = synthetic_speech(0.5, sample_rate=16000)
    assert resample(audio, 16000, 44100).shape == (round(0.5 * 44100),)
    assert np.array_equal(resample(audio, 16000, 16000), audio)
    with pytest.raises(InputError, match="positive"):
        resample(audio, 0, 44100)


def test_save_wav_is_pcm16_and_clips(tmp_path: Path) -> None:
    audio = np.array([0.0, 0.5, -0.25, 1.5, -2.0], dtype=np.float32)
    path = save_wav(tmp_path / "sub" / "out.wav", audio)
    info = sf.info(path)
    assert (info.samplerate, info.channels, info.subtype) == (44100, 1, "PCM_16")
    np.testing.assert_allclose(sf.read(path, dtype="float32")[0], np.clip(audio, -1, 1), atol=1 / 32767)


def test_unreadable_empty_and_missing(tmp_path: Path) -> None:
    (tmp_path / "junk.wav").write_text("not audio")
    with pytest.raises(InputError, match="cannot read audio file"):
        load_audio(tmp_path / "junk.wav")
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1)), 44100)
    with pytest.raises(InputError, match="holds no samples"):
        load_audio(tmp_path / "empty.wav")
    with pytest.raises(InputError, match="not found"):
        load_audio(tmp_path / "absent.wav")
