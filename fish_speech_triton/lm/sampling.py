"""Turning logits into ids (spec §2.5), a batch of rows at once, each row with its own parameters and RNG."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def penalise_repetitions(logits: Tensor, window_ids: Tensor, repetition_penalty: Tensor) -> Tensor:
    """Penalise the logits of the ids in each row's window (gather -> where -> scatter: once per distinct id)."""
    ids = window_ids.long()
    penalty = repetition_penalty[:, None]
    scores = logits.gather(1, ids)
    scores = torch.where(scores < 0, scores * penalty, scores / penalty)
    return logits.scatter(1, ids, scores)


def top_p_filter(logits: Tensor, top_p: Tensor) -> Tensor:
    """Set to -inf every id past the nucleus: cumulative probability (of these logits) above top_p, first kept."""
    sorted_logits, sorted_ids = torch.sort(logits, dim=-1, descending=True, stable=True)
    cumulative = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
    drop_sorted = cumulative > top_p[:, None]
    drop_sorted[:, 0] = False
    drop = drop_sorted.scatter(1, sorted_ids, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def distribution(
    logits: Tensor,
    window_ids: Tensor | None,
    top_p: Tensor,
    temperature: Tensor,
    repetition_penalty: Tensor,
) -> Tensor:
    """Probabilities `[B, V]` after the repetition penalty, top-p and temperature (spec 2.5 steps 1-3)."""
    logits = logits.float()
    if window_ids is not None:
        logits = penalise_repetitions(logits, window_ids, repetition_penalty.float())
    logits = top_p_filter(logits, top_p.float())
    return torch.softmax(logits / temperature.float().clamp_min(1e-5)[:, None], dim=-1)


def sample(
    logits: Tensor,
    window_ids: Tensor | None,
    top_p: Tensor,
    temperature: Tensor,
    repetition_penalty: Tensor,
    generators: Sequence[torch.Generator],
) -> Tensor:
    """Draw one id per row from `logits [B, V]`; returns `[B]` (int64).

    window_ids `[B, W]` (or None: no penalty); top_p, temperature, repetition_penalty `[B]`. Row b draws its
    noise `E ~ Exp(1)` of length V from `generators[b]`, so a row's result does not depend on the batch.
    """
    if len(generators) != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows need as many generators, got {len(generators)}")
    noise = exponential_noise(logits.shape[1], generators, logits.device)
    return sample_with_noise(logits, window_ids, top_p, temperature, repetition_penalty, noise)


def exponential_noise(
    width: int, generators: Sequence[torch.Generator], device: torch.device | str | None = None
) -> Tensor:
    """Exp(1) noise `[B, width]`: row b drawn from `generators[b]` (its next `width` draws)."""
    return torch.stack([torch.empty(width, device=device).exponential_(1, generator=g) for g in generators])


def sample_with_noise(
    logits: Tensor,
    window_ids: Tensor | None,
    top_p: Tensor,
    temperature: Tensor,
    repetition_penalty: Tensor,
    noise: Tensor,
) -> Tensor:
    """The id of each row `argmax(probs / noise)`: spec 2.5's draw, with the row's Exp(1) noise `[B, V]` given."""
    probs = distribution(logits, window_ids, top_p, temperature, repetition_penalty)
    return torch.argmax(probs / noise, dim=-1)


_MASK_63 = (1 << 63) - 1


def _mix(x: Tensor) -> Tensor:
    """A 64-bit integer hash (splitmix64's finaliser; int64 arithmetic wraps, shifts are made logical)."""
    x = (x ^ ((x >> 30) & (_MASK_63 >> 29))) * -4658895280553007687  # 0xBF58476D1CE4E5B9
    x = (x ^ ((x >> 27) & (_MASK_63 >> 26))) * -7723592293110705685  # 0x94D049BB133111EB
    return x ^ ((x >> 31) & (_MASK_63 >> 30))


_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 (2^64 / golden ratio) as a signed int64


def column_keys(width: int, device: torch.device | str | None = None) -> Tensor:
    """The per-column hash inputs of `hashed_exponential` for up to `width` columns, `[width]` int64.

    Made once, outside any compiled code: `torch.compile` turns an in-kernel `arange * constant` into an
    index expression, and Triton (PyTorch 2.11) refuses the 64-bit constant there.
    """
    return torch.arange(width, device=device, dtype=torch.long) * _GOLDEN


def hashed_exponential(seeds: Tensor, counters: Tensor, columns: Tensor) -> Tensor:
    """Exp(1) noise `[..., V]` that depends only on each (seed, counter) pair and the column.

    A counter-based generator: no generator state, one set of kernels for the whole batch (and for several
    counters at once: seeds and counters broadcast to any shape), and nothing that stops it from being
    captured in a CUDA graph. Rows stay independent of the batch they are in. `columns`: `column_keys(V)`.
    """
    key = _mix(seeds * _GOLDEN + counters)
    bits = _mix(key[..., None] + columns)
    uniform = (((bits >> 40) & 0xFFFFFF).float() + 0.5) / float(1 << 24)  # 24 bits in (0, 1)
    return -torch.log(uniform)


def sample_hashed(
    logits: Tensor,
    window_ids: Tensor | None,
    top_p: Tensor,
    temperature: Tensor,
    repetition_penalty: Tensor,
    seeds: Tensor,
    counters: Tensor,
    columns: Tensor,
) -> Tensor:
    """`sample` with counter-based noise (`hashed_exponential`) instead of per-row torch generators.

    Same distribution, other random stream: the fast serving path uses it so that a whole decode step,
    sampling included, can replay as one CUDA graph. Greedy decoding (one candidate left) is unaffected.
    `columns`: `column_keys(W)` for any W of at least the logits' width.
    """
    noise = hashed_exponential(seeds, counters, columns[: logits.shape[1]])
    return sample_with_noise(logits, window_ids, top_p, temperature, repetition_penalty, noise)
