"""Stored reference voices: `references/<id>/` holds audio files with same-stem `.lab` transcripts.

This is the layout the original server reads. The prompt codes of each audio file are computed once
(by the encoder function given to the store, in Triton a call to `vqgan_encoder`) and cached next to the
audio as `<name>.codes.npz` (for `alice.wav`: `alice.wav.codes.npz`) with the SHA-256 of the audio they
came from: a replaced sample is encoded again whatever its timestamps say. The store also keeps them in
memory, so a read-only folder works (its codes are then computed once per process).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fish_speech_triton.audio import decode_audio
from fish_speech_triton.errors import InputError

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus")
CODES_SUFFIX = ".codes.npz"
# One folder name: starts and ends with a letter, digit, '_', '-' or '.'; spaces only inside.
_ID = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\- ]{0,126}[A-Za-z0-9_.\-])?")

Encoder = Callable[[np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class Reference:
    text: str
    codes: np.ndarray  # [8, F] int32


def _is_reference_id(name: str) -> bool:
    return bool(_ID.fullmatch(name)) and ".." not in name


def validate_reference_id(reference_id: str) -> str:
    """A reference id is one folder name: no separators, no `..`, nothing hidden or absolute."""
    if not _is_reference_id(reference_id):
        raise InputError(
            f"invalid reference id {reference_id!r}: use letters, digits, '_', '-', '.' and inner spaces "
            "(at most 128 characters, no path separators or '..')"
        )
    return reference_id


def voice_ids(root: Path) -> list[str]:
    """The voices under `root` a request can name: folders with a valid id that stay inside `root`."""
    if not root.is_dir():
        return []
    base = root.resolve()
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and _is_reference_id(p.name) and p.resolve().parent == base
    )


def audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def read_transcript(lab: Path) -> str:
    try:
        return lab.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as exc:
        raise InputError(
            f"transcript {lab.name} is not UTF-8 text: {exc.reason} at byte {exc.start}"
        ) from exc


def codes_file(audio_path: Path) -> Path:
    return audio_path.with_name(audio_path.name + CODES_SUFFIX)


def audio_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cached_codes(audio_path: Path, digest: str | None = None) -> np.ndarray | None:
    """The codes cached beside `audio_path` when they were computed from these very bytes, else None."""
    cache = codes_file(audio_path)
    if not cache.is_file():
        return None
    try:
        with np.load(cache) as saved:
            if str(saved["sha256"]) != (digest or audio_digest(audio_path.read_bytes())):
                return None
            return saved["codes"].astype(np.int32, copy=False)
    except (OSError, ValueError, KeyError):  # a damaged cache is computed again
        return None


def _save_atomic(path: Path, codes: np.ndarray, digest: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, codes=codes, sha256=np.array(digest))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ReferenceStore:
    def __init__(self, root: str | Path, encode: Encoder):
        self.root = Path(root).resolve()
        self.encode = encode
        self._lock = threading.Lock()
        # audio path -> (the file's identity when read, its codes): no hashing while a file is untouched
        self._known: dict[Path, tuple[tuple[int, ...], np.ndarray]] = {}

    def folder(self, reference_id: str) -> Path:
        folder = (self.root / validate_reference_id(reference_id)).resolve()
        if folder.parent != self.root:
            raise InputError(f"invalid reference id {reference_id!r}")
        return folder

    def ids(self) -> list[str]:
        return voice_ids(self.root)

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
                references.append(Reference(read_transcript(lab), self._codes(audio_path)))
        if not references:
            raise InputError(f"reference {reference_id!r} has no audio file with a same-name .lab transcript")
        return references

    def _codes(self, audio_path: Path) -> np.ndarray:
        info = audio_path.stat()  # any write or rename changes the inode or the change time
        identity = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        known = self._known.get(audio_path)
        if known is not None and known[0] == identity:
            return known[1]
        data = audio_path.read_bytes()  # read once: hashed, and decoded when not cached
        digest = audio_digest(data)
        codes = cached_codes(audio_path, digest)
        if codes is None:
            name = f"stored reference {audio_path.parent.name}/{audio_path.name}"
            audio, rate = decode_audio(data, name)
            try:
                codes = np.asarray(self.encode(audio, rate), dtype=np.int32)
            except InputError as exc:  # too long, too short, silent...: say which stored file it is
                raise InputError(f"{name}: {exc}") from exc
            try:
                _save_atomic(codes_file(audio_path), codes, digest)
            except OSError as exc:  # a read-only folder: the codes stay in memory only
                logger.warning("cannot cache the codes of %s beside it (%s); kept in memory", audio_path, exc)
        self._known[audio_path] = (identity, codes)
        return codes
