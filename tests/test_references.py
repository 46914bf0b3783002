"""Stored reference voices (`serving.references`): ids, transcripts and the codes cached beside each sample."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import tritonclient.grpc as grpcclient

from client.triton_stream import RequestRefused, collect
from fish_speech_triton.audio import save_wav
from fish_speech_triton.errors import InputError
from fish_speech_triton.serving import references
from fish_speech_triton.serving.references import ReferenceStore, cached_codes, validate_reference_id


class CountingEncoder:
    """Codes that identify the audio they came from (its first sample), and how often it was called."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, audio: np.ndarray, rate: int) -> np.ndarray:
        self.calls += 1
        return np.full((8, 3), int(round(float(audio[0]) * 1000)) + 500, dtype=np.int32)


def sample(folder, name: str, level: float, text: str = "Hello.") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_wav(folder / name, np.full(2205, level, np.float32), 22050)
    (folder / name).with_suffix(".lab").write_text(text, encoding="utf-8")


def first_code(store: ReferenceStore, reference_id: str) -> list[int]:
    return [int(reference.codes[0, 0]) for reference in store.load(reference_id)]


@pytest.mark.parametrize("bad", ["alice ", " alice", "../alice", "a/b", "..", ".hidden", ""])
def test_reference_ids_are_one_plain_folder_name(bad):
    with pytest.raises(InputError, match="invalid reference id"):
        validate_reference_id(bad)
    assert validate_reference_id("Alice Smith-2.v1") == "Alice Smith-2.v1"


def test_codes_are_computed_once_and_again_when_the_sample_is_replaced(tmp_path):
    encoder = CountingEncoder()
    store = ReferenceStore(tmp_path, encoder)
    sample(tmp_path / "alice", "a.wav", 0.1)
    assert first_code(store, "alice") == [600]
    assert first_code(ReferenceStore(tmp_path, encoder), "alice") == [600]  # a new process reads the cache
    assert encoder.calls == 1

    # replaced by an older recording that keeps its timestamp (cp -p, kubectl cp): encoded again
    old = tmp_path / "old.wav"
    save_wav(old, np.full(2205, 0.2, np.float32), 22050)
    past = (tmp_path / "alice" / "a.wav").stat().st_mtime - 3600
    os.utime(old, (past, past))
    shutil.copy2(old, tmp_path / "alice" / "a.wav")
    assert first_code(store, "alice") == [700]
    assert first_code(ReferenceStore(tmp_path, encoder), "alice") == [700]
    assert encoder.calls == 2


def test_samples_with_one_name_in_two_formats_keep_their_own_codes(tmp_path):
    store = ReferenceStore(tmp_path, CountingEncoder())
    sample(tmp_path / "bob", "take.wav", 0.1)
    save_wav(tmp_path / "bob" / "take.flac", np.full(2205, 0.3, np.float32), 22050)
    assert first_code(store, "bob") == [800, 600]  # take.flac, take.wav (both read take.lab)
    assert cached_codes(tmp_path / "bob" / "take.wav")[0, 0] == 600


def test_a_read_only_folder_serves_its_voices_from_memory(tmp_path, monkeypatch):
    def read_only(path, codes, digest):
        raise PermissionError(13, "Read-only file system", str(path))

    monkeypatch.setattr(references, "_save_atomic", read_only)
    encoder = CountingEncoder()
    sample(tmp_path / "carol", "c.wav", 0.1)
    store = ReferenceStore(tmp_path, encoder)
    assert first_code(store, "carol") == first_code(store, "carol") == [600]
    assert encoder.calls == 1 and not list((tmp_path / "carol").glob("*.npz"))


def test_a_transcript_that_is_not_utf8_is_refused_by_name(tmp_path):
    sample(tmp_path / "dan", "d.wav", 0.1)
    (tmp_path / "dan" / "d.lab").write_bytes(b"caf\xe9")
    with pytest.raises(InputError, match="transcript d.lab is not UTF-8 text"):
        ReferenceStore(tmp_path, CountingEncoder()).load("dan")


def test_only_voices_a_request_can_name_are_listed(tmp_path):
    for name in ("alice", "José", ".hidden", "bob "):
        (tmp_path / "voices" / name).mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "voices" / "linked").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "voices" / "notes.txt").write_text("not a voice")
    assert ReferenceStore(tmp_path / "voices", CountingEncoder()).ids() == ["alice"]


def test_a_stored_sample_the_encoder_refuses_is_named(tmp_path):
    def refusing(audio: np.ndarray, rate: int) -> np.ndarray:
        raise InputError("AUDIO is too short: 441 samples")

    sample(tmp_path / "eve", "e.wav", 0.1)
    with pytest.raises(InputError, match="stored reference eve/e.wav: AUDIO is too short"):
        ReferenceStore(tmp_path, refusing).load("eve")


def test_a_stored_sample_is_bounded_from_its_header_and_an_unreadable_one_named(tmp_path):
    encoder = CountingEncoder()
    (tmp_path / "long").mkdir()
    with sf.SoundFile(tmp_path / "long" / "l.flac", "w", 8000, 1, format="FLAC") as file:
        file.write(np.zeros(8000 * 660, np.int16))  # 11 minutes of silence in a few kB
    (tmp_path / "long" / "l.lab").write_text("Hi.", encoding="utf-8")
    with pytest.raises(InputError, match="stored reference long/l.flac lasts 660 s: at most 600 s"):
        ReferenceStore(tmp_path, encoder).load("long")
    sample(tmp_path / "bad", "b.wav", 0.1)
    (tmp_path / "bad" / "b.wav").write_bytes(b"RIFF nonsense")
    with pytest.raises(InputError, match="stored reference bad/b.wav is not an audio file that can be read"):
        ReferenceStore(tmp_path, encoder).load("bad")
    assert encoder.calls == 0


def test_through_triton_a_refused_stored_sample_is_a_refusal_naming_it(triton_deployment):
    """The encoder's refusal travels through llama_semantic's call to it as a refusal, not a server failure."""
    folder = triton_deployment.references_dir / "tiny"
    try:
        folder.mkdir()
        save_wav(folder / "t.wav", np.full(220, 0.1, np.float32), 44100)  # 5 ms: too short to encode
        (folder / "t.lab").write_text("Hi.", encoding="utf-8")
        client = grpcclient.InferenceServerClient(triton_deployment.grpc_url)
        inputs = {"TEXT": "Hello.", "REFERENCE_ID": "tiny"}
        with pytest.raises(RequestRefused, match="refused: stored reference tiny/t.wav: .*too short"):
            collect(client, "llama_semantic", inputs, ("CODES",))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
