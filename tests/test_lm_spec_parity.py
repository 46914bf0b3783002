"""Greedy decoding with our cached, batched implementation equals the naive from-the-spec reference."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from spec_reference import SpecReference

from fish_speech_triton.lm.checkpoint import WEIGHTS_FILE, load_lm, write_random_lm_checkpoint
from fish_speech_triton.lm.config import DualARConfig
from fish_speech_triton.lm.generation import Generation, SamplingParams, generate
from fish_speech_triton.lm.prompt import PromptBuilder, Reference

pytestmark = pytest.mark.usefixtures("lm_single_thread")

FRAMES = 40
PENALTY = 1.5  # != 1, so the repetition window changes the result
TEXT = "The quick brown fox jumps over the lazy dog."


def _both(checkpoint: Path, references=()) -> tuple[Generation, torch.Tensor]:
    """Our generation and the reference's codes, greedy, for the same prompt."""
    model, tokenizer = load_lm(checkpoint)
    model.setup_caches(1)
    prompt = PromptBuilder(tokenizer, model.config.num_codebooks).prompt(TEXT, references)
    params = SamplingParams(top_p=1e-6, repetition_penalty=PENALTY, max_new_tokens=FRAMES)
    ours = generate(model, prompt, im_end_id=tokenizer.im_end_id, params=params, generator=torch.Generator())
    reference = SpecReference(checkpoint, tokenizer.semantic_begin_id, tokenizer.im_end_id)
    return ours, reference.generate(prompt, FRAMES, PENALTY)


def test_zero_shot_matches_reference(lm_small_checkpoint):
    ours, expected = _both(lm_small_checkpoint)
    assert not ours.stopped and ours.codes.shape == (8, FRAMES)
    assert torch.equal(ours.codes, expected)


def test_with_reference_matches_reference(lm_small_checkpoint):
    codes = torch.randint(0, 1000, (8, 25), generator=torch.Generator().manual_seed(3))
    references = [Reference.create("Hello there, my friend.", codes, 8, 1024)]
    ours, expected = _both(lm_small_checkpoint, references)
    assert torch.equal(ours.codes, expected)


def test_projected_fast_dim_and_tied_output_match_reference(tmp_path):
    config = dataclasses.replace(
        DualARConfig.small(), fast_dim=64, fast_n_head=2, fast_n_local_heads=1, tie_word_embeddings=True
    )
    checkpoint = write_random_lm_checkpoint(tmp_path, config, seed=1)
    keys = torch.load(checkpoint / WEIGHTS_FILE, weights_only=True).keys()
    assert "fast_project_in.weight" in keys and "output.weight" not in keys
    ours, expected = _both(checkpoint)
    assert torch.equal(ours.codes, expected)


def test_stops_at_im_end_without_keeping_it(lm_small_checkpoint, tmp_path):
    # Make <|im_end|> score above the token the model produced at frame 12: generation must stop there.
    plain, _ = _both(lm_small_checkpoint)
    model, tokenizer = load_lm(lm_small_checkpoint)
    token_at_12 = int(plain.frames[0, 12])
    state = torch.load(lm_small_checkpoint / WEIGHTS_FILE, weights_only=True)
    checkpoint = write_random_lm_checkpoint(tmp_path, model.config)
    state["output.weight"][tokenizer.im_end_id] = 1.2 * state["output.weight"][token_at_12]
    torch.save(state, checkpoint / WEIGHTS_FILE)
    ours, expected = _both(checkpoint)
    assert ours.stopped and int(ours.frames[0, -1]) == tokenizer.im_end_id
    assert ours.codes.shape[1] == ours.frames.shape[1] - 1 <= 12
    assert torch.equal(ours.codes, expected)
