"""Codes files shared with the offline tools: `.npy`, int32 `[8, frames]`, values in `[0, 1024)`.

`client.encode` writes them like `tools.vqgan` (fake.npy), `client.generate` like `text2semantic`
(codes_0.npy); `client.generate --prompt-tokens` and `client.decode` read either.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fish_speech_triton.errors import InputError

NUM_CODEBOOKS = 8
CODEBOOK_SIZE = 1024


def read_codes(path: Path) -> np.ndarray:
    """int32 `[8, frames>0]` codes from a `.npy` file, with a clear error for anything else."""
    if not path.is_file():
        raise InputError(f"codes file not found: {path}")
    try:
        codes = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"cannot read codes file {path} (expected a .npy array): {exc}") from exc
    if not np.issubdtype(codes.dtype, np.integer):
        raise InputError(f"codes in {path} must be integers, got dtype {codes.dtype}")
    if codes.ndim != 2 or codes.shape[0] != NUM_CODEBOOKS or codes.shape[1] == 0:
        raise InputError(
            f"codes in {path} must have shape [{NUM_CODEBOOKS}, frames>0], got {list(codes.shape)}"
        )
    if codes.min() < 0 or codes.max() >= CODEBOOK_SIZE:
        raise InputError(
            f"codes in {path} must be in [0, {CODEBOOK_SIZE}), got values in [{codes.min()}, {codes.max()}]"
        )
    return codes.astype(np.int32)


def check_codes_path(path: Path) -> Path:
    """Refuse an output name that the offline tools would not read as codes (checked before any work)."""
    if path.suffix.lower() != ".npy":
        raise InputError(f"codes go to a .npy file, got {path}")
    return path


def write_codes(path: Path, codes: np.ndarray) -> Path:
    check_codes_path(path).parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(codes, dtype=np.int32))
    return path
