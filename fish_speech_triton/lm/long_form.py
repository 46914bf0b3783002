"""Long text, one segment at a time with a rolling history in the prompt ("iterative prompt", spec §3.1)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from fish_speech_triton.errors import InputError
from fish_speech_triton.lm.generation import Generation, SamplingParams, generate
from fish_speech_triton.lm.model import DualARTransformer
from fish_speech_triton.lm.prompt import PromptBuilder, Reference
from fish_speech_triton.lm.text import clean_text, split_text
from fish_speech_triton.lm.tokenizer import FishTokenizer

HISTORY_RESERVE = 1024  # positions kept free for the frames of the segment being generated

SegmentCallback = Callable[[int, int, Generation, float], None]


def select_history(history: Sequence[Tensor], budget: int) -> list[Tensor]:
    """The history part of a segment's prompt.

    `history` alternates [segment prompt, generated frames, ...] and ends with the current segment's prompt.
    Kept: the first two entries always, plus the longest run of most recent entries that starts with a
    segment prompt and fits `budget` positions (the current prompt is always kept).
    """
    if len(history) <= 3:
        return list(history)
    recent = [history[-1]]
    used = history[-1].shape[1]
    for start in range(len(history) - 3, 1, -2):  # add (prompt, frames) pairs, newest first
        pair = history[start : start + 2]
        size = sum(entry.shape[1] for entry in pair)
        if used + size > budget:
            break
        recent = [*pair, *recent]
        used += size
    return [*history[:2], *recent]


def text_segments(text: str, *, iterative_prompt: bool, chunk_length: int) -> list[str]:
    if "\x00" in text:  # no text holds one; the segmenter uses it to keep decimal points whole
        raise InputError(f"the text contains a NUL character (at {text.index(chr(0))})")
    segments = split_text(text, chunk_length) if iterative_prompt else [clean_text(text)]
    segments = [segment for segment in segments if segment]
    if not segments:
        raise InputError("the text is empty after cleaning (nothing to speak)")
    return segments


@torch.inference_mode()
def generate_long(
    model: DualARTransformer,
    tokenizer: FishTokenizer,
    text: str,
    *,
    references: Sequence[Reference] = (),
    params: SamplingParams,
    generator: torch.Generator,
    iterative_prompt: bool = True,
    chunk_length: int = 100,
    max_length: int = 2048,
    on_segment: SegmentCallback | None = None,
) -> Tensor:
    """Codes `[K, N]` for `text`, generated segment by segment; `on_segment(i, count, generation, seconds)`."""
    builder = PromptBuilder(tokenizer, model.config.num_codebooks)
    segments = text_segments(text, iterative_prompt=iterative_prompt, chunk_length=chunk_length)
    prefix = builder.prefix(references)
    budget = max_length - HISTORY_RESERVE - prefix.shape[1]
    history: list[Tensor] = []
    codes = []
    for index, segment in enumerate(segments):
        history.append(builder.segment(segment))
        prompt = torch.cat([prefix, *select_history(history, budget)], dim=1)
        started = time.perf_counter()
        result = generate(model, prompt, im_end_id=tokenizer.im_end_id, params=params, generator=generator)
        if on_segment is not None:
            on_segment(index, len(segments), result, time.perf_counter() - started)
        history.append(result.frames)
        codes.append(result.codes)
    return torch.cat(codes, dim=1)
