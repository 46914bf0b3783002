"""Turning a `llama_semantic` request's inputs into a GenerationRequest, with every check the contract promises.

Kept apart from the Triton plumbing so the rules can be unit-tested without a server.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fish_speech_triton.errors import InputError
from fish_speech_triton.lm.generation import SamplingParams
from fish_speech_triton.lm.prompt import Reference, validate_codes
from fish_speech_triton.lm.text import utf8_len
from fish_speech_triton.serving.codec_runtime import MAX_STREAM_CHUNK_FRAMES
from fish_speech_triton.serving.engine import GenerationRequest
from fish_speech_triton.serving.references import ReferenceStore

MIN_CHUNK_LENGTH = 100  # the original API's minimum: shorter segments cut words apart
MAX_CHUNK_LENGTH = 1000
# Longest TEXT (UTF-8 bytes) by default: ~100 KB is well over an hour of speech, and one request holds a KV
# slot for all of it (the model's max_text_bytes parameter).
DEFAULT_MAX_TEXT_BYTES = 100_000


@dataclass
class SemanticInputs:
    """The raw inputs of one request (None: left out by the client)."""

    text: str | None
    reference_text: str | None = None
    reference_codes: np.ndarray | None = None
    reference_id: str | None = None
    max_new_tokens: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    chunk_length: int | None = None
    stream_chunk_frames: int | None = None


def _default(value, fallback):
    return fallback if value is None else value


def build_request(
    inputs: SemanticInputs,
    *,
    num_codebooks: int,
    codebook_size: int,
    references: ReferenceStore | None,
    defaults: SamplingParams | None = None,
    default_chunk_length: int = 200,
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES,
) -> GenerationRequest:
    defaults = defaults or SamplingParams()
    if inputs.text is None:
        raise InputError("TEXT is missing: the text to speak is required")
    if not inputs.text.strip():
        raise InputError("TEXT is empty")
    if (size := utf8_len(inputs.text)) > max_text_bytes:
        raise InputError(
            f"TEXT is {size} bytes: at most {max_text_bytes} (the model's max_text_bytes); send it in parts"
        )
    refs: list[Reference] = []
    has_codes = inputs.reference_codes is not None and inputs.reference_codes.size > 0
    has_text = inputs.reference_text is not None and bool(inputs.reference_text.strip())
    if inputs.reference_id is not None and inputs.reference_id.strip():
        if has_codes or has_text:  # clients that always send every field send empty ones
            raise InputError(
                "give either REFERENCE_ID or a reference (audio/codes with REFERENCE_TEXT), not both"
            )
        if references is None:
            raise InputError("stored references are not configured on this server")
        refs.extend(
            Reference.create(ref.text, ref.codes, num_codebooks, codebook_size)
            for ref in references.load(inputs.reference_id.strip())
        )
    elif has_codes:
        if not has_text:
            raise InputError(
                "a reference (REFERENCE_AUDIO / REFERENCE_CODES) needs REFERENCE_TEXT, its transcript"
            )
        codes = validate_codes(inputs.reference_codes, num_codebooks, codebook_size, "REFERENCE_CODES")
        refs.append(Reference(inputs.reference_text, codes))
    elif has_text:
        raise InputError("REFERENCE_TEXT was given without reference audio or codes")
    elif inputs.reference_codes is not None and inputs.reference_codes.ndim != 2:
        raise InputError(
            f"REFERENCE_CODES must have shape [8, frames], got {list(inputs.reference_codes.shape)}"
        )

    chunk_length = _default(inputs.chunk_length, default_chunk_length)
    if not MIN_CHUNK_LENGTH <= chunk_length <= MAX_CHUNK_LENGTH:
        raise InputError(
            f"CHUNK_LENGTH must be in [{MIN_CHUNK_LENGTH}, {MAX_CHUNK_LENGTH}], got {chunk_length}"
        )
    stream_chunk = inputs.stream_chunk_frames
    if stream_chunk is not None and not 1 <= stream_chunk <= MAX_STREAM_CHUNK_FRAMES:
        raise InputError(f"STREAM_CHUNK_FRAMES must be in [1, {MAX_STREAM_CHUNK_FRAMES}], got {stream_chunk}")
    params = SamplingParams(
        top_p=float(_default(inputs.top_p, defaults.top_p)),
        temperature=float(_default(inputs.temperature, defaults.temperature)),
        repetition_penalty=float(_default(inputs.repetition_penalty, defaults.repetition_penalty)),
        max_new_tokens=int(_default(inputs.max_new_tokens, defaults.max_new_tokens)),
    )
    return GenerationRequest(
        text=inputs.text,
        references=tuple(refs),
        params=params,
        seed=inputs.seed,
        chunk_length=chunk_length,
        stream_chunk_frames=stream_chunk,
    )
