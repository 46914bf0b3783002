"""The Fish-Speech tiktoken tokenizer (spec §3): BPE ranks from `tokenizer.tiktoken` plus fixed special tokens."""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from pathlib import Path

import tiktoken

from fish_speech_triton.errors import CheckpointError

# The split regex of the original, alternation order kept; `\?!` is a literal "?!" there (not a look-ahead).
SPLIT_PATTERN = "|".join(
    [
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)",
        r"\p{P}",
        r"[^\r\n\p{L}\p{N}]?\p{L}+",
        r"\p{N}",
        r" ?[^\s\p{L}\p{N}]+[\r\n]*",
        r"\s*[\r\n]+",
        r"\s+(\?!\S)",
        r"\s+",
    ]
)

BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
TEXT = "<|text|>"
VOICE = "<|voice|>"
INTERLEAVE = "<|interleave|>"
NUM_SEMANTIC_TOKENS = 1024


def semantic_token(index: int) -> str:
    return f"<|semantic:{index}|>"


# Special token i gets id len(ranks) + i, in exactly this order.
SPECIAL_TOKENS: tuple[str, ...] = (
    BEGIN_OF_TEXT,
    END_OF_TEXT,
    PAD,
    IM_START,
    IM_END,
    *(f"<|placeholder:{i}|>" for i in range(4)),
    TEXT,
    VOICE,
    INTERLEAVE,
    *(semantic_token(i) for i in range(NUM_SEMANTIC_TOKENS)),
)

TOKENIZER_FILE = "tokenizer.tiktoken"
SPECIAL_TOKENS_FILE = "special_tokens.json"


def read_ranks(path: str | Path) -> dict[bytes, int]:
    """Parse a tiktoken rank file: one `base64(bytes) rank` per line, blank lines ignored."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path.name} not found in {path.parent}") from exc
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as exc:
            raise CheckpointError(f"{path}:{number}: not a `base64 rank` line") from exc
    if len(set(ranks.values())) != len(ranks):
        raise CheckpointError(f"{path}: ranks are not unique")
    return ranks


class FishTokenizer:
    """Text <-> token ids. Special tokens written inside the text are recognised as such."""

    def __init__(self, ranks: dict[bytes, int], name: str = "fish") -> None:
        self.special_tokens = {token: len(ranks) + i for i, token in enumerate(SPECIAL_TOKENS)}
        try:
            self._encoding = tiktoken.Encoding(
                name=name, pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=self.special_tokens
            )
        except ValueError as exc:
            raise CheckpointError(f"invalid tokenizer ranks: {exc}") from exc
        self.num_ranks = len(ranks)
        self.semantic_begin_id = self.special_tokens[semantic_token(0)]
        self.semantic_end_id = self.special_tokens[semantic_token(NUM_SEMANTIC_TOKENS - 1)]
        self.im_start_id = self.special_tokens[IM_START]
        self.im_end_id = self.special_tokens[IM_END]
        self.voice_id = self.special_tokens[VOICE]

    @classmethod
    def from_file(cls, path: str | Path) -> FishTokenizer:
        return cls(read_ranks(path), name=Path(path).stem)

    @property
    def vocab_size(self) -> int:
        """Number of ids in use: the BPE ranks plus the special tokens."""
        return self.num_ranks + len(SPECIAL_TOKENS)

    def token_id(self, token: str) -> int:
        return self.special_tokens[token]

    def encode(self, text: str) -> list[int]:
        return self._encoding.encode(text, allowed_special="all", disallowed_special=())

    def decode(self, ids: list[int]) -> str:
        return self._encoding.decode(ids)


# Training text for the small test tokenizer (any English prose would do).
_SAMPLE_TEXT = """
The quick brown fox jumps over the lazy dog. Speak out the provided text, then listen to the voice.
This is a small tokenizer for tests: it knows every single byte and a few hundred merges learned from
these sentences. Hello world! How are you today? I am fine, thank you, and you? The weather is nice and
the sun is shining over the hills. She sells sea shells by the sea shore; the shells she sells are surely
sea shells. A journey of a thousand miles begins with a single step. To be, or not to be, that is the
question. It was the best of times, it was the worst of times, it was the age of wisdom, it was the age
of foolishness. Numbers like 3.14 and 2048 appear in text too, and so do words such as generation,
transformer, attention, language, model, speech, synthesis, streaming, inference and server.
"""


def learn_bpe_ranks(text: str, num_merges: int) -> dict[bytes, int]:
    """Byte-level BPE: ranks 0..255 for the single bytes, then the most frequent adjacent pairs, merged greedily.

    Words are pre-split as "optional space + letters/digits" or a single other character, which keeps the
    learned tokens inside the pieces the split regex produces.
    """
    ranks = {bytes([b]): b for b in range(256)}
    words = Counter(tuple(bytes([b]) for b in w.encode()) for w in re.findall(r" ?\w+|\S|\s", text))
    while len(ranks) < 256 + num_merges:
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merged = best[0] + best[1]
        if merged in ranks:  # the same bytes reached by another pair: just reuse the token
            words = _merge_pair(words, best)
            continue
        ranks[merged] = len(ranks)
        words = _merge_pair(words, best)
    return ranks


def _merge_pair(words: Counter, pair: tuple[bytes, bytes]) -> Counter:
    merged: Counter = Counter()
    for word, count in words.items():
        out: list[bytes] = []
        i = 0
        while i < len(word):
            if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
                out.append(word[i] + word[i + 1])
                i += 2
            else:
                out.append(word[i])
                i += 1
        merged[tuple(out)] += count
    return merged


def write_tokenizer_files(
    directory: str | Path, *, num_merges: int = 200, sample_text: str = _SAMPLE_TEXT
) -> FishTokenizer:
    """Write a small valid `tokenizer.tiktoken` (all bytes + learned merges) and `special_tokens.json`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ranks = learn_bpe_ranks(sample_text, num_merges)
    lines = (f"{base64.b64encode(token).decode()} {rank}" for token, rank in ranks.items())
    (directory / TOKENIZER_FILE).write_text("\n".join(lines) + "\n")
    tokenizer = FishTokenizer(ranks)
    (directory / SPECIAL_TOKENS_FILE).write_text(json.dumps(tokenizer.special_tokens, indent=1) + "\n")
    return tokenizer
