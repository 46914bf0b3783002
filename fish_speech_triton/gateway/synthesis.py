"""From a TTS request to 44.1 kHz audio chunks, through the repository's stage models.

The gateway runs the ensemble's three steps itself (`vqgan_encoder` -> `llama_semantic` -> `vqgan_decoder`,
with the same tensors the ensemble passes) because Triton 2.51's ensemble scheduler does not cancel a step
that is already running: a client that hangs up on an ensemble stream leaves its LM request generating to the
end, holding a KV-cache slot. A `llama_semantic` stream cancels at once, so a closed HTTP connection frees
its slot. The audio is the ensemble's, sample for sample (tests/test_gateway.py checks it).

Mapping of the original's fields (docs/http_api.md explains each):
- `reference_id` -> REFERENCE_ID (a voice stored on the Triton server); it wins over `references`, as in
  the original;
- `references` -> each file encoded by `vqgan_encoder`; `llama_semantic` takes one reference, so several
  become one: their codes back to back and their transcripts in order;
- `chunk_length`, `max_new_tokens`, `top_p`, `temperature`, `repetition_penalty`, `seed` -> the same inputs;
- `use_memory_cache` and `normalize` change nothing: the server caches reference prompts by content and
  always cleans the text.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

import numpy as np

from client.tts import sampling_inputs
from fish_speech_triton.audio import decode_audio
from fish_speech_triton.errors import InputError
from fish_speech_triton.gateway.schemas import ReferenceAudio, TTSRequest
from fish_speech_triton.gateway.triton import TritonBackend
from fish_speech_triton.serving.references import ReferenceStore, validate_reference_id

STAGE_MODELS = ("vqgan_encoder", "llama_semantic", "vqgan_decoder")


class Synthesizer:
    """Checks TTS requests and runs them, and the codec alone, on the models of one Triton server."""

    def __init__(self, backend: TritonBackend, voices: ReferenceStore | None, max_text_length: int = 0):
        self.backend = backend
        self.voices = voices
        self.max_text_length = max_text_length

    # ------------------------------------------------------------------ codec

    async def encode(self, audio_file: bytes, what: str) -> np.ndarray:
        """A whole audio file -> codes [8, frames] through `vqgan_encoder` (which resamples)."""
        audio, rate = await asyncio.to_thread(decode_audio, audio_file, what)
        inputs = {"AUDIO": audio, "SAMPLE_RATE": np.array([rate], dtype=np.int32)}
        return (await self.backend.infer("vqgan_encoder", inputs, ("CODES",)))["CODES"]

    async def decode(self, codes: np.ndarray, context_frames: int = 0) -> np.ndarray:
        """Codes [8, frames] -> float32 audio after the first `context_frames` frames."""
        inputs = {"CODES": codes, "CONTEXT_FRAMES": np.array([context_frames], dtype=np.int32)}
        return (await self.backend.infer("vqgan_decoder", inputs, ("AUDIO",)))["AUDIO"].reshape(-1)

    # ------------------------------------------------------------------ voices

    def voice_ids(self) -> list[str]:
        return self.voices.ids() if self.voices is not None else []

    def stored_voice(self, reference_id: str) -> str:
        """A valid reference id; when the gateway knows the references folder, one that exists."""
        reference_id = validate_reference_id(reference_id.strip())
        if self.voices is not None and reference_id not in (ids := self.voices.ids()):
            raise InputError(
                f"unknown reference id {reference_id!r}: stored voices are {', '.join(ids) or 'none'}"
            )
        return reference_id

    async def reference_inputs(self, references: list[ReferenceAudio]) -> dict[str, object]:
        texts = []
        for index, reference in enumerate(references):
            if not reference.text.strip():
                raise InputError(f"references[{index}].text is empty: each reference needs its transcript")
            texts.append(reference.text.strip())
        codes = await asyncio.gather(
            *(self.encode(ref.audio, f"references[{index}].audio") for index, ref in enumerate(references))
        )
        return {"REFERENCE_CODES": np.concatenate(codes, axis=1), "REFERENCE_TEXT": " ".join(texts)}

    # ------------------------------------------------------------------ speech

    async def inputs(self, request: TTSRequest) -> dict[str, object]:
        """`llama_semantic`'s inputs for a request, after the checks the original makes."""
        if not request.text.strip():
            raise InputError("text is empty")
        if 0 < self.max_text_length < len(request.text):
            raise InputError(
                f"text is too long: {len(request.text)} characters, at most {self.max_text_length} are allowed"
            )
        # The request carries the sampling fields under the CLI's names, so the CLI's mapping applies.
        inputs: dict[str, object] = {"TEXT": request.text, **sampling_inputs(request)}
        if request.reference_id is not None and request.reference_id.strip():
            inputs["REFERENCE_ID"] = self.stored_voice(request.reference_id)
        elif request.references:
            inputs.update(await self.reference_inputs(request.references))
        return inputs

    async def chunks(self, inputs: dict[str, object]) -> AsyncGenerator[np.ndarray, None]:
        """Audio chunks (float32, 44.1 kHz) as the LM streams codes; closing this cancels the LM request."""
        codes_stream = self.backend.stream("llama_semantic", inputs, ("CODES", "CONTEXT_FRAMES"))
        async with contextlib.aclosing(codes_stream):
            async for codes in codes_stream:
                yield await self.decode(codes["CODES"], int(codes["CONTEXT_FRAMES"][0]))

    async def audio(self, inputs: dict[str, object]) -> np.ndarray:
        parts = [chunk async for chunk in self.chunks(inputs)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
