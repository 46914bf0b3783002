"""Request bodies: the original Fish-Speech API's (field names, defaults and ranges as in its `ServeTTSRequest`)
and OpenAI's `/v1/audio/speech`. Unknown fields are ignored, as the original does; the sampling fields the
original declares strict take no strings or booleans.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, StrictInt, ValidationError

from fish_speech_triton.errors import InputError
from fish_speech_triton.lm.text import utf8_bytes

INT32_MAX = 2**31 - 1
INT64 = {"ge": -(2**63), "le": 2**63 - 1}


class InvalidBody(InputError):
    """The body does not fit the endpoint's schema (the original's framework answers these with 422)."""


def _base64_in_json(value: Any) -> Any:
    """msgpack carries raw bytes; JSON carries the same bytes as a base64 string."""
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise ValueError("expected base64-encoded bytes") from exc
    return value


def _only_normal_speed(value: float) -> float:
    if value != 1.0:
        raise ValueError("only 1.0 is supported: the model has no speed control")
    return value


def _unicode(value: str) -> str:
    """JSON may carry a lone surrogate (`"\\ud83d"`: half of an emoji cut in two); it is no text to speak."""
    try:
        utf8_bytes(value, "the text")
    except InputError as exc:
        raise ValueError(str(exc)) from exc
    return value


Bytes = Annotated[bytes, BeforeValidator(_base64_in_json)]
Text = Annotated[str, AfterValidator(_unicode)]
AudioFormat = Literal["wav", "pcm", "mp3", "flac"]


class ReferenceAudio(BaseModel):
    audio: Bytes  # a whole audio file: wav, flac, mp3, ogg...
    text: Text  # its transcript


class Sampling(BaseModel):
    """How the LM samples: the original's fields; OpenAI requests may carry them too (an extension)."""

    chunk_length: Annotated[int, Field(ge=100, le=300, strict=True)] = 200
    seed: Annotated[int, Field(**INT64)] | None = None
    max_new_tokens: Annotated[int, Field(ge=0, le=INT32_MAX)] = 1024
    top_p: Annotated[float, Field(ge=0.1, le=1.0, strict=True)] = 0.7
    repetition_penalty: Annotated[float, Field(ge=0.9, le=2.0, strict=True)] = 1.2
    temperature: Annotated[float, Field(ge=0.1, le=1.0, strict=True)] = 0.7


class TTSRequest(Sampling):
    text: Text
    format: AudioFormat = "wav"
    references: list[ReferenceAudio] = []
    reference_id: Text | None = None
    use_memory_cache: Literal["on", "off"] = "off"
    normalize: bool = True
    streaming: bool = False


class EncodeRequest(BaseModel):
    audios: Annotated[list[Bytes], Field(min_length=1)]


class DecodeRequest(BaseModel):
    tokens: Annotated[list[list[list[StrictInt]]], Field(min_length=1)]  # per item: [8][frames]


class SpeechRequest(Sampling):
    """OpenAI's `POST /v1/audio/speech`; `voice` names a stored reference."""

    model: str = "fish-speech-1.5"
    input: Text
    voice: Text | None = None
    response_format: AudioFormat = "mp3"
    speed: Annotated[float, AfterValidator(_only_normal_speed)] = 1.0
    stream: bool = False
    stream_format: Literal["audio"] = "audio"  # OpenAI's "sse" (events carrying base64 audio) is not offered


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], payload: object) -> M:
    """Validate a decoded body; every problem becomes one readable InvalidBody line."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            where = ".".join(str(part) for part in error["loc"]) or "body"
            problems.append(f"{where}: {error['msg']}")
        raise InvalidBody("invalid request: " + "; ".join(problems)) from exc
