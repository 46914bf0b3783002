"""Sampling one distribution (spec §2.5) and the order in which a request consumes random numbers."""

from __future__ import annotations

import pytest
import torch

from fish_speech_triton.lm.generation import SamplingParams, prefill
from fish_speech_triton.lm.sampling import penalise_repetitions, sample, top_p_filter


def _row(*values: float) -> torch.Tensor:
    return torch.tensor([values])


def test_repeated_ids_are_penalised_once():
    logits = _row(2.0, -2.0, 1.0, 0.5)
    penalised = penalise_repetitions(logits, torch.tensor([[0, 0, 0, 1, 1]]), torch.tensor([2.0]))
    assert penalised.tolist() == [[1.0, -4.0, 1.0, 0.5]]


def test_top_p_drops_entries_whose_cumulative_probability_exceeds_it_but_keeps_the_first():
    logits = _row(3.0, 2.0, 1.0, 0.0)  # softmax cumulative: 0.644, 0.881, 0.968, 1.0

    def kept(top_p: float) -> int:
        return int((~torch.isinf(top_p_filter(logits, torch.tensor([top_p])))).sum())

    assert [kept(p) for p in (0.01, 0.7, 0.9, 0.97)] == [1, 1, 2, 3]


def test_sample_is_argmax_of_probs_over_exponential_noise():
    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(0))
    window = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
    top_p, temperature, penalty = (
        torch.tensor([0.8, 1.0]),
        torch.tensor([0.7, 1e-9]),
        torch.tensor([1.3, 0.9]),
    )
    got = sample(
        logits, window, top_p, temperature, penalty, [torch.Generator().manual_seed(s) for s in (5, 6)]
    )
    for row, seed in enumerate((5, 6)):
        x = logits[row].clone()
        for i in set(window[row].tolist()):
            x[i] = x[i] * penalty[row] if x[i] < 0 else x[i] / penalty[row]
        order = torch.argsort(x, descending=True, stable=True)
        cumulative = torch.cumsum(torch.softmax(x[order], dim=-1), dim=-1)
        drop = order[1:][cumulative[1:] > top_p[row]]
        x[drop] = float("-inf")
        probs = torch.softmax(x / max(float(temperature[row]), 1e-5), dim=-1)
        noise = torch.empty(50).exponential_(1, generator=torch.Generator().manual_seed(seed))
        assert int(got[row]) == int(torch.argmax(probs / noise))


def test_each_row_uses_only_its_own_generator():
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
    ones = torch.ones(3)
    batched = sample(logits, None, ones, ones, ones, [torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    for row, seed in enumerate((1, 2, 3)):
        alone = sample(
            logits[row : row + 1], None, ones[:1], ones[:1], ones[:1], [torch.Generator().manual_seed(seed)]
        )
        assert int(alone[0]) == int(batched[row])


def test_generator_count_must_match_rows():
    with pytest.raises(ValueError, match="generators"):
        sample(torch.zeros(2, 5), None, torch.ones(2), torch.ones(2), torch.ones(2), [torch.Generator()])


def test_random_numbers_are_drawn_token_first_then_codebooks_1_to_7(lm_small):
    model, _ = lm_small
    model.setup_caches(1, 64)
    prompt = torch.zeros((9, 5), dtype=torch.long)
    generator = torch.Generator().manual_seed(123)
    prefill(model, prompt, 0, SamplingParams(), generator)
    expected = torch.Generator().manual_seed(123)
    torch.empty(model.config.vocab_size).exponential_(1, generator=expected)
    for _ in range(model.config.num_codebooks - 1):
        torch.empty(model.config.codebook_size).exponential_(1, generator=expected)
    assert torch.equal(generator.get_state(), expected.get_state())
