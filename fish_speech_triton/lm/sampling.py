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
    logits = logits.float()
    if window_ids is not None:
        logits = penalise_repetitions(logits, window_ids, repetition_penalty.float())
    logits = top_p_filter(logits, top_p.float())
    probs = torch.softmax(logits / temperature.float().clamp_min(1e-5)[:, None], dim=-1)
    vocab = logits.shape[1]
    noise = torch.stack(
        [torch.empty(vocab, device=logits.device).exponential_(1, generator=g) for g in generators]
    )
    return torch.argmax(probs / noise, dim=-1)
