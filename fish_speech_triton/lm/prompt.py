"""Building the LM prompt from text and reference codes (spec §3): `[1 + num_codebooks, T]` int64 tensors.

Row 0 holds token ids; rows 1..K hold the codebook values of semantic positions (zeros elsewhere).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fish_speech_triton.errors import InputError
from fish_speech_triton.lm.text import clean_text
from fish_speech_triton.lm.tokenizer import IM_END, VOICE, FishTokenizer

SYSTEM_PROMPT = "Speak out the provided text."

Part = str | Tensor  # a text part, or codes [K, F]


def validate_codes(
    codes: Tensor | np.ndarray, num_codebooks: int, codebook_size: int, what: str = "prompt codes"
) -> Tensor:
    """Check reference codes are integers of shape `[num_codebooks, F]` (F >= 1) in `[0, codebook_size)`."""
    codes = torch.as_tensor(codes)
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise InputError(f"{what} must be integers, got {codes.dtype}")
    if codes.ndim != 2 or codes.shape[0] != num_codebooks or codes.shape[1] == 0:
        raise InputError(f"{what} must have shape [{num_codebooks}, frames], got {list(codes.shape)}")
    low, high = int(codes.min()), int(codes.max())
    if low < 0 or high >= codebook_size:
        raise InputError(f"{what} must be in [0, {codebook_size}), found values in [{low}, {high}]")
    return codes.long().cpu()


@dataclass(frozen=True)
class Reference:
    """A reference utterance: its transcript and its codec codes `[K, F]` (validated by `validate_codes`)."""

    text: str
    codes: Tensor

    @classmethod
    def create(
        cls,
        text: str,
        codes: Tensor | np.ndarray,
        num_codebooks: int,
        codebook_size: int,
        what: str = "prompt codes",
    ) -> Reference:
        """A reference with validated codes; `what` names them in error messages."""
        return cls(text, validate_codes(codes, num_codebooks, codebook_size, what))


class PromptBuilder:
    """Encodes messages for one tokenizer and codebook layout."""

    def __init__(self, tokenizer: FishTokenizer, num_codebooks: int) -> None:
        self.tokenizer = tokenizer
        self.num_codebooks = num_codebooks

    def _encode_part(self, part: Part) -> Tensor:
        if isinstance(part, str):
            ids = torch.tensor(self.tokenizer.encode(part), dtype=torch.long)
            block = torch.zeros((1 + self.num_codebooks, len(ids)), dtype=torch.long)
            block[0] = ids
            return block
        codes = part.long()
        return torch.cat([codes[:1] + self.tokenizer.semantic_begin_id, codes], dim=0)

    def message(self, role: str, parts: Sequence[Part], *, close: bool = True) -> Tensor:
        """`<|im_start|>{role}\\n`, the parts, then `<|im_end|>` (when `close`), each tokenized separately."""
        all_parts = [f"<|im_start|>{role}\n", *parts, *([IM_END] if close else [])]
        return torch.cat([self._encode_part(part) for part in all_parts], dim=1)

    def prefix(self, references: Sequence[Reference]) -> Tensor:
        """System prompt + reference turns; empty (`[1 + K, 0]`) without references."""
        if not references:
            return torch.zeros((1 + self.num_codebooks, 0), dtype=torch.long)
        blocks = [self.message("system", [SYSTEM_PROMPT])]
        for reference in references:
            blocks.append(self.message("user", [clean_text(reference.text)]))
            blocks.append(self.message("assistant", [VOICE, reference.codes]))
        return torch.cat(blocks, dim=1)

    def segment(self, text: str) -> Tensor:
        """The user turn with the (cleaned) text, then the open assistant turn `<|im_start|>assistant\\n<|voice|>`."""
        return torch.cat(
            [self.message("user", [clean_text(text)]), self.message("assistant", [VOICE], close=False)], dim=1
        )

    def prompt(self, text: str, references: Sequence[Reference] = ()) -> Tensor:
        """The whole prompt of a one-segment generation."""
        return torch.cat([self.prefix(references), self.segment(text)], dim=1)
