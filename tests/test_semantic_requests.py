"""A request's raw inputs become one generation request, or a refusal that says what to change."""

from __future__ import annotations

import numpy as np
import pytest

from fish_speech_triton.audio import save_wav
from fish_speech_triton.errors import InputError
from fish_speech_triton.serving.references import ReferenceStore
from fish_speech_triton.serving.semantic_requests import SemanticInputs, build_request


@pytest.fixture
def store(tmp_path) -> ReferenceStore:
    (tmp_path / "alice").mkdir()
    save_wav(tmp_path / "alice" / "a.wav", np.full(2205, 0.1, np.float32), 22050)
    (tmp_path / "alice" / "a.lab").write_text("Hello.", encoding="utf-8")
    return ReferenceStore(tmp_path, lambda audio, rate: np.full((8, 3), 7, np.int32))


def build(store: ReferenceStore, **inputs):
    return build_request(SemanticInputs(**inputs), num_codebooks=8, codebook_size=1024, references=store)


@pytest.mark.parametrize("blank", ["", "  "])
def test_a_stored_voice_with_an_empty_transcript_field_is_the_stored_voice(store, blank):
    """Forms and ensemble callers send every field; an empty REFERENCE_TEXT is no second reference."""
    request = build(store, text="Hi.", reference_id="alice", reference_text=blank)
    assert [ref.text for ref in request.references] == ["Hello."]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"reference_id": "alice", "reference_text": "Hi."}, "give either REFERENCE_ID or a reference"),
        ({"reference_id": "alice", "reference_codes": np.zeros((8, 2), np.int32)}, "not both"),
        ({"reference_codes": np.zeros((8, 2), np.int32), "reference_text": " "}, "needs REFERENCE_TEXT"),
        ({"reference_text": "Hi."}, "REFERENCE_TEXT was given without reference audio or codes"),
        ({"stream_chunk_frames": 0}, r"STREAM_CHUNK_FRAMES must be in \[1, 1024\], got 0"),
        ({"stream_chunk_frames": 1025}, r"STREAM_CHUNK_FRAMES must be in \[1, 1024\], got 1025"),
        ({"chunk_length": 99}, r"CHUNK_LENGTH must be in \[100, 1000\]"),
    ],
)
def test_inputs_that_do_not_go_together_are_refused(store, inputs, message):
    with pytest.raises(InputError, match=message):
        build(store, text="Hi.", **inputs)


def test_per_request_values_reach_the_generation_request(store):
    request = build(store, text="Hi.", stream_chunk_frames=1024, chunk_length=300, seed=5, top_p=0.5)
    assert (request.stream_chunk_frames, request.chunk_length, request.seed) == (1024, 300, 5)
    assert request.params.top_p == 0.5 and request.references == ()
