"""Codes files, shared by the offline tools and the Triton clients: `.npy`, int32 `[8, frames]`, values in
`[0, 1024)`.

`tools.vqgan` and `client.encode` write them (fake.npy), `text2semantic` and `client.generate` too
(codes_0.npy); `--prompt-tokens` and the decoders read either.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from fish_speech_triton.audio import check_writable
from fish_speech_triton.errors import InputError

NUM_CODEBOOKS = 8
CODEBOOK_SIZE = 1024


def load_npy(path: Path, what: str = "codes file") -> np.ndarray:
    """The array of a `.npy` file, with an error that says what the file is instead when it is not one."""
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    if zipfile.is_zipfile(path):  # np.save's sibling np.savez: an archive of arrays
        raise InputError(f"{what} {path} is a .npz archive, not a .npy array: save the codes with np.save")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(
            f"{what} {path} is not a .npy array ({exc}); audio must be encoded to codes first "
            "(tools.vqgan or client.encode)"
        ) from exc
    return array


def read_codes(
    path: Path, groups: int = NUM_CODEBOOKS, code_space: int = CODEBOOK_SIZE, what: str = "codes file"
) -> np.ndarray:
    """int32 `[groups, frames>0]` codes in `[0, code_space)` from a `.npy` file, with a clear error for
    anything else."""
    codes = load_npy(path, what)
    if not np.issubdtype(codes.dtype, np.integer):
        raise InputError(f"codes in {path} must be integers, got dtype {codes.dtype}")
    if codes.ndim != 2 or codes.shape[0] != groups or codes.shape[1] == 0:
        raise InputError(f"codes in {path} must have shape [{groups}, frames>0], got {list(codes.shape)}")
    if codes.min() < 0 or codes.max() >= code_space:
        raise InputError(
            f"codes in {path} must be in [0, {code_space}), got values in [{codes.min()}, {codes.max()}]"
        )
    return codes.astype(np.int32)


def check_codes_path(path: Path, option: str = "--output") -> Path:
    """Refuse, before any work, an output that the offline tools would not read as codes or that cannot be
    written there."""
    if path.suffix.lower() != ".npy":
        raise InputError(f"codes go to a .npy file, got {path}")
    check_writable(path, option)
    return path


def write_codes(path: Path, codes: np.ndarray) -> Path:
    check_codes_path(path).parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(codes, dtype=np.int32))
    return path
