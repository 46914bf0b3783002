"""Hyper-parameters of the DualAR language model, read from and written to the checkpoint's `config.json`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fish_speech_triton.errors import CheckpointError
from fish_speech_triton.hub import read_checkpoint_json

MODEL_TYPE = "dual_ar"

# Keys whose null/absent value means "same as the slow transformer's".
_FAST_DEFAULTS = {
    "fast_dim": "dim",
    "fast_n_head": "n_head",
    "fast_n_local_heads": "n_local_heads",
    "fast_intermediate_size": "intermediate_size",
    "fast_attention_qkv_bias": "attention_qkv_bias",
}


def default_intermediate_size(dim: int) -> int:
    """round_up(int(2 * 4 * dim / 3), 256), the SwiGLU width used when config.json leaves it out."""
    hidden = int(2 * 4 * dim / 3)
    return -(-hidden // 256) * 256


@dataclass
class DualARConfig:
    """`config.json` of a dual_ar checkpoint. Defaults for absent keys are those of the original code."""

    vocab_size: int = 32000
    n_layer: int = 32
    n_head: int = 32
    n_local_heads: int | None = None
    dim: int = 4096
    intermediate_size: int | None = None
    head_dim: int = 0
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    max_seq_len: int = 2048
    tie_word_embeddings: bool = True
    attention_qkv_bias: bool = False
    codebook_size: int = 160
    num_codebooks: int = 4
    share_codebook_embeddings: bool = True
    n_fast_layer: int = 4
    fast_dim: int | None = None
    fast_n_head: int | None = None
    fast_n_local_heads: int | None = None
    fast_head_dim: int = 0
    fast_intermediate_size: int | None = None
    fast_attention_qkv_bias: bool | None = None
    model_type: str = MODEL_TYPE

    def __post_init__(self) -> None:
        if self.model_type != MODEL_TYPE:
            raise CheckpointError(
                f"config model_type is {self.model_type!r}; only {MODEL_TYPE!r} is supported"
            )
        if self.n_local_heads is None or self.n_local_heads == -1:
            self.n_local_heads = self.n_head
        if self.intermediate_size is None:
            self.intermediate_size = default_intermediate_size(self.dim)
        for fast_key, slow_key in _FAST_DEFAULTS.items():
            if getattr(self, fast_key) is None:
                setattr(self, fast_key, getattr(self, slow_key))
        # Both head sizes are derived, whatever the file says (the original recomputes them the same way).
        self.head_dim = self.dim // self.n_head
        self.fast_head_dim = self.fast_dim // self.fast_n_head
        self._check()

    def _check(self) -> None:
        problems = []
        for prefix, dim, heads, kv_heads in (
            ("", self.dim, self.n_head, self.n_local_heads),
            ("fast_", self.fast_dim, self.fast_n_head, self.fast_n_local_heads),
        ):
            if dim % heads:
                problems.append(f"{prefix}dim {dim} is not a multiple of {prefix}n_head {heads}")
            if heads % kv_heads:
                problems.append(
                    f"{prefix}n_head {heads} is not a multiple of {prefix}n_local_heads {kv_heads}"
                )
            if (dim // heads) % 2:
                problems.append(f"{prefix}head_dim {dim // heads} is odd (RoPE needs pairs)")
        for key in (
            "vocab_size",
            "n_layer",
            "n_head",
            "dim",
            "max_seq_len",
            "codebook_size",
            "num_codebooks",
        ):
            if getattr(self, key) <= 0:
                problems.append(f"{key} must be positive")
        if problems:
            raise CheckpointError("invalid dual_ar config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DualARConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    @classmethod
    def from_json(cls, path: str | Path) -> DualARConfig:
        path = Path(path)
        values = read_checkpoint_json(path, "config.json")
        if not isinstance(values, dict):
            raise CheckpointError(f"{path} does not hold a JSON object")
        try:
            return cls.from_dict(values)
        except TypeError as exc:
            raise CheckpointError(f"{path}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def full_size(cls) -> DualARConfig:
        """The dimensions of the published fishaudio/fish-speech-1.5 checkpoint (about 0.64 B parameters)."""
        return cls(
            vocab_size=102048,
            n_layer=24,
            n_head=16,
            n_local_heads=2,
            dim=1024,
            intermediate_size=4096,
            rope_base=1e6,
            norm_eps=1e-6,
            max_seq_len=4096,
            tie_word_embeddings=False,
            attention_qkv_bias=False,
            codebook_size=1024,
            num_codebooks=8,
            n_fast_layer=4,
            fast_dim=1024,
            fast_n_head=16,
            fast_n_local_heads=2,
            fast_intermediate_size=4096,
            share_codebook_embeddings=True,
        )

    @classmethod
    def small(cls) -> DualARConfig:
        """A tiny model with the real layout (see dual_ar_keys_example.txt), for tests.

        The vocabulary fits the tokenizer that `write_tokenizer_files` writes by default plus the specials.
        """
        return cls(
            vocab_size=1536,
            n_layer=3,
            n_head=4,
            n_local_heads=2,
            dim=128,
            intermediate_size=320,
            rope_base=1e6,
            norm_eps=1e-6,
            max_seq_len=1024,
            tie_word_embeddings=False,
            codebook_size=1024,
            num_codebooks=8,
            n_fast_layer=2,
        )
