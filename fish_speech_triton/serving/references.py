"""Stored reference voices: `references/<id>/` holds audio files with same-stem `.lab` transcripts.

This is the layout the original server reads. The prompt codes of each audio file are computed once
(by the encoder function given to the store, in Triton a call to `vqgan_encoder`) and cached next to the
audio as `<stem>.npy`; they are recomputed when the audio is newer than its cache.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from fish_speech_triton.errors import InputError

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus")
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\- ]{0,127}")

Encoder = Callable[[np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class Reference:
    text: str
    codes: np.ndarray  # [8, F] int32


def validate_reference_id(reference_id: str) -> str:
    """A reference id is one folder name: no separators, no `..`, nothing hidden or absolute."""
    if not _ID.fullmatch(reference_id) or ".." in reference_id:
        raise InputError(
            f"invalid reference id {reference_id!r}: use letters, digits, '_', '-', '.' and spaces "
            "(at most 128 characters, no path separators or '..')"
        )
    return reference_id


def audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def _save_atomic(path: Path, codes: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, codes)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ReferenceStore:
    def __init__(self, root: str | Path, encode: Encoder):
        self.root = Path(root).resolve()
        self.encode = encode
        self._lock = threading.Lock()

    def folder(self, reference_id: str) -> Path:
        folder = (self.root / validate_reference_id(reference_id)).resolve()
        if folder.parent != self.root:
            raise InputError(f"invalid reference id {reference_id!r}")
        return folder

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def load(self, reference_id: str) -> list[Reference]:
        folder = self.folder(reference_id)
        if not folder.is_dir():
            raise InputError(f"unknown reference id {reference_id!r}")
        references = []
        with self._lock:  # one encoding per file even when requests for a new voice arrive together
            for audio_path in audio_files(folder):
                lab = audio_path.with_suffix(".lab")
                if not lab.is_file():
                    continue
                references.append(Reference(lab.read_text(encoding="utf-8").strip(), self._codes(audio_path)))
        if not references:
            raise InputError(f"reference {reference_id!r} has no audio file with a same-name .lab transcript")
        return references

    def _codes(self, audio_path: Path) -> np.ndarray:
        cache = audio_path.with_suffix(".npy")
        if cache.is_file() and cache.stat().st_mtime >= audio_path.stat().st_mtime:
            return np.load(cache).astype(np.int32, copy=False)
        try:
            audio, rate = sf.read(str(audio_path), dtype="float32", always_2d=True)
        except Exception as exc:
            raise InputError(f"cannot read reference audio {audio_path.name}: {exc}") from exc
        codes = np.asarray(self.encode(audio.mean(axis=1), int(rate)), dtype=np.int32)
        _save_atomic(cache, codes)
        return codes
