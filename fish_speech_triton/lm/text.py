"""Text cleaning and splitting into segments for the iterative prompt (spec §3, §3.1)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator

from fish_speech_triton.errors import InputError

_QUOTES = {"\u2018": "'", "\u2019": "'"}
_EMOJI = re.compile("[\U0001f600-\U0001f64f\U0001f300-\U0001f5ff\U0001f680-\U0001f6ff\U0001f1e0-\U0001f1ff]+")
_COMMA_RUNS = re.compile(r",{2,}")
_DECIMAL = re.compile(r"(?<=\d)\.(?=\d)")
_PROTECTED_DOT = "\x00"  # stands in for the dot of a decimal number while splitting at sentence ends

SENTENCE_ENDS = frozenset(".!?。！？")
CLAUSE_ENDS = frozenset(",，")
SPACES = frozenset(" ")


def clean_text(text: str) -> str:
    """Strip, turn curly single quotes into `'`, remove emoji, collapse runs of commas."""
    text = text.strip()
    for curly, plain in _QUOTES.items():
        text = text.replace(curly, plain)
    text = _EMOJI.sub("", text)
    return _COMMA_RUNS.sub(",", text)


def utf8_bytes(text: str, what: str) -> bytes:
    """`text` as UTF-8, or an InputError naming `what` for a lone surrogate (half of an emoji cut in two)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{what} is not valid Unicode text: {exc.reason} at character {exc.start}") from exc


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def _split_after(pieces: Iterable[str], length: int, marks: frozenset[str]) -> Iterator[str]:
    """Cut pieces longer than `length` bytes after each of `marks`; shorter pieces pass through."""
    for piece in pieces:
        if utf8_len(piece) <= length:
            yield piece
            continue
        current = ""
        for char in piece:
            current += char
            if char in marks:
                yield current
                current = ""
        if current:
            yield current


def _split_by_length(pieces: Iterable[str], length: int) -> Iterator[str]:
    """Cut pieces still longer than `length` bytes into runs of at most `length` bytes (whole characters)."""
    for piece in pieces:
        current = ""
        for char in piece:
            if current and utf8_len(current + char) > length:
                yield current
                current = ""
            current += char
        if current:
            yield current


def _is_blank(piece: str) -> bool:
    return all(char.isspace() or unicodedata.category(char).startswith("P") for char in piece)


def split_text(text: str, chunk_length: int) -> list[str]:
    """Clean `text` and split it into segments of at most `chunk_length` UTF-8 bytes (spec §3.1).

    Pieces are cut at sentence ends (not inside decimals like 3.14), then at commas, then at spaces, then
    hard by length; adjacent pieces are merged greedily while the merge fits; pieces that are only
    whitespace/punctuation are dropped.
    """
    if chunk_length <= 0:
        raise ValueError(f"chunk_length must be positive, got {chunk_length}")
    protected = _DECIMAL.sub(_PROTECTED_DOT, clean_text(text))
    pieces = _split_after([protected], chunk_length, SENTENCE_ENDS)
    pieces = (piece.replace(_PROTECTED_DOT, ".") for piece in pieces)
    pieces = _split_after(pieces, chunk_length, CLAUSE_ENDS)
    pieces = _split_after(pieces, chunk_length, SPACES)
    pieces = _split_by_length(pieces, chunk_length)
    segments: list[str] = []
    current = ""
    for piece in pieces:
        if utf8_len(current) + utf8_len(piece) <= chunk_length:
            current += piece
        else:
            segments.append(current)
            current = piece
    segments.append(current)
    stripped = (segment.strip() for segment in segments)
    return [segment for segment in stripped if segment and not _is_blank(segment)]
