"""The fast decode path as a CUDA graph keeps greedy parity (runs where a GPU is present; CI has none)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lm_support import assert_engine_matches_faithful_loop

from fish_speech_triton.lm.checkpoint import load_lm, write_random_lm_checkpoint
from fish_speech_triton.lm.config import DualARConfig
from fish_speech_triton.lm.generation import SamplingParams
from fish_speech_triton.serving.engine import GenerationRequest, SemanticEngine, generate_codes

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GREEDY = SamplingParams(top_p=1e-6, repetition_penalty=1.3, max_new_tokens=32)
TEXTS = [
    "Hello world, this is a test.",
    "Another sentence here!",
    "Short.",
    "Graphs replay the same kernels.",
]


@pytest.fixture(scope="module")
def cuda_lm(tmp_path_factory: pytest.TempPathFactory):
    path = write_random_lm_checkpoint(tmp_path_factory.mktemp("lm") / "small", DualARConfig.small(), seed=0)
    return load_lm(Path(path), device="cuda", dtype=torch.float32)


COMPILED_SLOTS_DIFFER = pytest.mark.xfail(
    strict=True,
    reason="known (H200, PyTorch 2.11): compiled, odd slots round differently from even ones, so seeded "
    "sampling depends on the slot (greedy codes do not); why compile_decode stays a benchmark option",
)
EAGER_AND_COMPILED = pytest.mark.parametrize("compile_decode", [False, True], ids=["graphed", "compiled"])


@EAGER_AND_COMPILED
def test_graphed_decode_matches_the_faithful_loop(cuda_lm, compile_decode):
    model, tokenizer = cuda_lm
    engine = SemanticEngine(model, tokenizer, num_slots=3, fast_decode=True, compile_decode=compile_decode)
    try:
        requests = [GenerationRequest(text=t, params=GREEDY, seed=1) for t in TEXTS]
        assert_engine_matches_faithful_loop(engine, cuda_lm, requests)
    finally:
        engine.stop()


@pytest.mark.parametrize(
    "compile_decode", [False, pytest.param(True, marks=COMPILED_SLOTS_DIFFER)], ids=["graphed", "compiled"]
)
def test_graphed_sampling_is_the_same_alone_and_batched(cuda_lm, compile_decode):
    model, tokenizer = cuda_lm
    params = SamplingParams(max_new_tokens=24)
    engine = SemanticEngine(model, tokenizer, num_slots=4, fast_decode=True, compile_decode=compile_decode)
    try:
        alone = [generate_codes(engine, [GenerationRequest(text=t, params=params, seed=5)])[0] for t in TEXTS]
        together = generate_codes(engine, [GenerationRequest(text=t, params=params, seed=5) for t in TEXTS])
    finally:
        engine.stop()
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a, b)
