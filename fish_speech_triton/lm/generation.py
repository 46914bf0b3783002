"""Generation steps shared by the offline loop and the batched server (spec §2.3–2.5).

A sequence is generated as: `prefill` (the prompt -> first frame, no repetition penalty), then repeated
`decode_step`s (last frame -> next frame), each sampling the row-0 token and then the codebooks with the
fast transformer. `decode_step` takes a batch of sequences, each in its own KV-cache slot and position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fish_speech_triton.errors import InputError
from fish_speech_triton.lm.model import DualARTransformer
from fish_speech_triton.lm.sampling import exponential_noise, sample

WINDOW_SIZE = 16


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings; the defaults are the original's (max_new_tokens 0 = up to max_seq_len)."""

    top_p: float = 0.7
    temperature: float = 0.7
    repetition_penalty: float = 1.2
    max_new_tokens: int = 1024

    def __post_init__(self) -> None:
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 < self.temperature < 2:
            raise InputError(f"temperature must be in (0, 2), got {self.temperature}")
        if not 0 < self.repetition_penalty < 2:
            raise InputError(f"repetition_penalty must be in (0, 2), got {self.repetition_penalty}")
        if self.max_new_tokens < 0:
            raise InputError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")


@dataclass(frozen=True)
class BatchSamplingParams:
    """The sampling settings of a batch, one entry per row (float32 tensors `[B]`)."""

    top_p: Tensor
    temperature: Tensor
    repetition_penalty: Tensor

    @classmethod
    def stack(
        cls, params: Sequence[SamplingParams], device: torch.device | str | None = None
    ) -> BatchSamplingParams:
        def column(name: str) -> Tensor:
            return torch.tensor([getattr(p, name) for p in params], dtype=torch.float32, device=device)

        return cls(column("top_p"), column("temperature"), column("repetition_penalty"))


class RepetitionWindow:
    """The repetition-penalty window of one sequence (spec §2.4).

    `prev [1 + num_codebooks, capacity]` starts at zero; decode step i writes its frame at column i (the
    prefill's frame is never written); step i sees `prev[:, 0:16]` if i < 16 else `prev[:, i-16:i]`.
    """

    def __init__(self, num_rows: int, capacity: int, device: torch.device | str | None = None) -> None:
        self.prev = torch.zeros((num_rows, max(capacity, WINDOW_SIZE)), dtype=torch.long, device=device)

    def window(self, step: int) -> Tensor:
        start = max(step - WINDOW_SIZE, 0)
        return self.prev[:, start : start + WINDOW_SIZE]

    def record(self, step: int, frame: Tensor) -> None:
        self.prev[:, step] = frame


def _sample_frame(
    model: DualARTransformer,
    logits: Tensor,
    hidden: Tensor,
    windows: Tensor | None,
    params: BatchSamplingParams,
    generators: Sequence[torch.Generator],
) -> Tensor:
    """Token from the slow logits, then codebooks 1..K-1 from the fast transformer; returns `[B, 1 + K]`.

    A fast runtime that samples whole frames (`model.frame_sampler`) gets each row's noise for codebooks
    1..K-1 drawn ahead from its generator, in the order the per-position loop draws it: the same codes."""
    p = (params.top_p, params.temperature, params.repetition_penalty)
    window = None if windows is None else model.token_window(windows[:, 0])
    token = model.token_of(sample(logits, window, *p, generators))
    c = model.config
    codebook = (token - model.semantic_begin_id).clamp(0, c.codebook_size - 1)
    sampler = model.frame_sampler
    if sampler is not None:  # the runtime runs the positions and draws itself: the same noise, in order
        noise = torch.stack(
            [exponential_noise(c.codebook_size, generators) for _ in range(1, c.num_codebooks)], dim=1
        )  # [B, K - 1, codebook_size]; each generator draws codebook 1, 2, ... as the loop below does
        codes = sampler.sample_frame(
            model.fast_project_in(hidden), codebook, noise, None if windows is None else windows[:, 2:], *p
        )
        return torch.cat([token[:, None], codebook[:, None], codes.to(token.device)], dim=1)
    model.forward_fast(hidden, 0)  # position 0 only fills the fast cache; its logits are not used
    frame = [token, codebook]
    for k in range(1, c.num_codebooks):
        fast_logits = model.forward_fast(model.embed_fast(codebook), k)
        codebook = sample(fast_logits, None if windows is None else windows[:, k + 1], *p, generators)
        frame.append(codebook)
    return torch.stack(frame, dim=1)


@torch.inference_mode()
def prefill(
    model: DualARTransformer,
    prompt: Tensor,
    slot: int,
    params: SamplingParams,
    generator: torch.Generator,
    *,
    start_pos: int = 0,
) -> Tensor:
    """Run `prompt [1 + K, T]` into cache `slot` and sample the first frame `[1 + K]` (no repetition penalty).

    With `start_pos > 0` the slot must already hold positions `0..start_pos-1` (e.g. an imported cached
    prefix) and only `prompt[:, start_pos:]` is computed.
    """
    device = model.embeddings.weight.device
    tokens = prompt[None, :, start_pos:].to(device)
    positions = torch.arange(start_pos, prompt.shape[1], device=device)[None]
    logits, hidden = model.forward_slow(tokens, positions, torch.tensor([slot], device=device))
    batch_params = BatchSamplingParams.stack([params], device)
    return _sample_frame(model, logits, hidden, None, batch_params, [generator])[0]


@torch.inference_mode()
def decode_step(
    model: DualARTransformer,
    frames: Tensor,
    positions: Tensor,
    slots: Tensor,
    windows: Tensor,
    params: BatchSamplingParams,
    generators: Sequence[torch.Generator],
) -> Tensor:
    """One decode step for `B` sequences: feed each row's last frame, return each row's next frame `[B, 1 + K]`.

    frames `[B, 1 + K]` (the frame produced last), positions `[B]` (where that frame goes: prompt length +
    frames already fed), slots `[B]`, windows `[B, 1 + K, 16]` (row 0 penalises the token, row k + 1
    codebook k), params one entry per row, generators one per row.
    """
    logits, hidden = model.forward_slow(frames[:, :, None], positions[:, None], slots)
    return _sample_frame(model, logits, hidden, windows, params, generators)


@dataclass
class Generation:
    """Result of `generate`: every frame made (a terminating `<|im_end|>` frame included) and the codes."""

    frames: Tensor  # [1 + K, M]
    stopped: bool  # True when the last frame is <|im_end|>

    @property
    def codes(self) -> Tensor:
        """`[K, N]`: the codebook rows of the frames, without a terminating `<|im_end|>` frame (spec §2.3.5)."""
        frames = self.frames[:, :-1] if self.stopped else self.frames
        return frames[1:]


def frame_budget(prompt_length: int, max_new_tokens: int, max_seq_len: int) -> int:
    """How many frames may be generated after a prompt: max_new_tokens (0 = unlimited), capped by max_seq_len."""
    if prompt_length >= max_seq_len:
        raise InputError(
            f"the prompt is {prompt_length} positions long; the model holds at most {max_seq_len} "
            "(use shorter references or text)"
        )
    room = max_seq_len - prompt_length
    return min(max_new_tokens, room) if max_new_tokens else room


@torch.inference_mode()
def generate(
    model: DualARTransformer,
    prompt: Tensor,
    *,
    im_end_id: int,
    params: SamplingParams,
    generator: torch.Generator,
    slot: int = 0,
) -> Generation:
    """Generate frames for one prompt `[1 + K, T]` until `<|im_end|>` or `params.max_new_tokens` frames."""
    if not model.num_slots:
        model.setup_caches(1)
    length = prompt.shape[1]
    budget = frame_budget(length, params.max_new_tokens, model.cache_seq_len)
    device = model.embeddings.weight.device
    frame = prefill(model, prompt, slot, params, generator)
    frames = [frame]
    window = RepetitionWindow(frame.shape[0], budget, device)
    batch_params = BatchSamplingParams.stack([params], device)
    slots = torch.tensor([slot], device=device)
    for step in range(budget - 1):
        if int(frame[0]) == im_end_id:
            break
        position = torch.tensor([length + step], device=device)
        frame = decode_step(
            model, frame[None], position, slots, window.window(step)[None], batch_params, [generator]
        )[0]
        window.record(step, frame)
        frames.append(frame)
    return Generation(frames=torch.stack(frames, dim=1).cpu(), stopped=int(frame[0]) == im_end_id)
