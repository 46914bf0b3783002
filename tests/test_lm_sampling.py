"""Sampling one distribution (spec §2.5) and the order in which a request consumes random numbers."""

from __future__ import annotations

import shutil

import pytest
import torch

from fish_speech_triton.lm.generation import SamplingParams, prefill
from fish_speech_triton.lm.sampling import (
    column_keys,
    hashed_exponential,
    penalise_repetitions,
    sample,
    sample_hashed,
    top_p_filter,
)


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


def test_hashed_noise_depends_on_seed_counter_and_column_only():
    columns = column_keys(64)
    both = hashed_exponential(torch.tensor([3, 4]), torch.tensor([10, 10]), columns)
    alone = hashed_exponential(torch.tensor([4]), torch.tensor([10]), columns)
    torch.testing.assert_close(both[1:], alone, rtol=0, atol=0)
    assert not torch.equal(both[0], both[1]) and bool((both > 0).all())
    narrower = hashed_exponential(torch.tensor([3]), torch.tensor([10]), columns[:40])
    torch.testing.assert_close(narrower, both[:1, :40], rtol=0, atol=0)
    # several counters per row at once (the fast decode step's codebooks): the same noise as one by one
    counters = torch.tensor([[10, 11, 12], [7, 8, 9]])
    grid = hashed_exponential(torch.tensor([[3], [4]]), counters, columns)
    assert grid.shape == (2, 3, 64)
    for row, seed in enumerate((3, 4)):
        for j in range(3):
            one = hashed_exponential(torch.tensor([seed]), counters[row, j : j + 1], columns)
            torch.testing.assert_close(grid[row, j], one[0], rtol=0, atol=0)


@pytest.mark.skipif(shutil.which("g++") is None, reason="inductor's CPU code needs a C++ compiler")
def test_compiled_hashed_sampling_draws_the_eager_ids():
    # torch.compile folded the 64-bit column hash into an index expression that overflowed (Triton refused
    # it, inductor's CPU code crashed); the keys now come from a tensor made outside the compiled code.
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1025, generator=generator)
    window = torch.randint(0, 1025, (4, 16), generator=generator)
    top_p = torch.tensor([0.7, 0.9, 1.0, 0.5])
    temperature = torch.tensor([0.7, 1.0, 0.5, 0.9])
    penalty = torch.tensor([1.2, 1.0, 1.5, 1.1])
    seeds, counters = torch.tensor([1, 2, 3, 2**40]), torch.tensor([0, 9, 99, 12345])
    columns = column_keys(2048)
    args = (logits, window, top_p, temperature, penalty, seeds, counters, columns)
    eager = sample_hashed(*args)
    compiled = torch.compile(sample_hashed, dynamic=False)(*args)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
