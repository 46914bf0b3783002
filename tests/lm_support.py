"""Helpers of the LM tests: the faithful loop's codes, and the engine's greedy parity with it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fish_speech_triton.lm.generation import SamplingParams
from fish_speech_triton.lm.long_form import generate_long
from fish_speech_triton.serving.engine import GenerationRequest, SemanticEngine, generate_codes


def faithful_codes(
    lm, text: str, params: SamplingParams, *, seed: int = 1, references=(), chunk_length: int = 200
) -> np.ndarray:
    """Codes `[8, N]` of the faithful offline loop (`generate_long`) for (model, tokenizer) `lm`."""
    model, tokenizer = lm
    generator = torch.Generator(device=model.embeddings.weight.device).manual_seed(seed)
    codes = generate_long(
        model,
        tokenizer,
        text,
        references=references,
        params=params,
        generator=generator,
        chunk_length=chunk_length,
    )
    return codes.numpy()


def assert_engine_matches_faithful_loop(
    engine: SemanticEngine, lm, requests: Sequence[GenerationRequest]
) -> list[np.ndarray]:
    """Run `requests` through `engine` together; each one's codes equal the faithful loop's on `lm`."""
    results = generate_codes(engine, requests)
    for request, codes in zip(requests, results, strict=True):
        expected = faithful_codes(
            lm,
            request.text,
            request.params,
            seed=request.seed,
            references=request.references,
            chunk_length=request.chunk_length,
        )
        np.testing.assert_array_equal(codes, expected)
    return results
