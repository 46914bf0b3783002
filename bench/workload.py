"""The benchmark's workload: a fixed text set, one seed per request, and a closed-loop driver.

Request i speaks TEXTS[i % len(TEXTS)] with seed SEED + i, the same for every target, so ours and the
baseline synthesise exactly the same requests. At concurrency c, c workers each send a request, wait for its
whole answer, then send the next, until the level's requests are done.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fish_speech_triton.errors import FishSpeechError, first_line

# One segment each (< 100 UTF-8 bytes, under any chunk length used here), of similar length.
TEXTS = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Streaming speech lets a listener hear the first words almost at once.",
    "Every benchmark needs a fixed workload, or its numbers mean nothing.",
    "A serving system shares one model between many people at the same time.",
    "Please remember to water the plants while I am away this weekend.",
    "The train to the coast leaves at seven and arrives a little after nine.",
    "Numbers measured on two small cores are a floor, not a ceiling.",
    "Good tools make the easy things simple and the hard things possible.",
)
SEED = 1000


@dataclass(frozen=True)
class RequestSpec:
    index: int
    text: str
    seed: int


def request_specs(count: int) -> list[RequestSpec]:
    return [RequestSpec(i, TEXTS[i % len(TEXTS)], SEED + i) for i in range(count)]


WARMUP = RequestSpec(-1, TEXTS[0], SEED - 1)


@dataclass
class RequestRecord:
    """What one request took; times are `time.perf_counter()` seconds."""

    index: int
    started: float
    finished: float = 0.0
    first_audio_at: float | None = None
    audio_seconds: float = 0.0
    error: str | None = None

    @property
    def ttfa(self) -> float | None:
        return None if self.first_audio_at is None else self.first_audio_at - self.started

    @property
    def latency(self) -> float:
        return self.finished - self.started


def error_text(exc: Exception) -> str:
    """A failed request's error as its record keeps it: ours by its message, any other with its type."""
    return str(exc) if isinstance(exc, FishSpeechError) else first_line(exc)


class Target(Protocol):
    name: str

    async def run(self, spec: RequestSpec) -> RequestRecord: ...


@dataclass
class LevelRun:
    target: str
    concurrency: int
    wall_s: float
    records: list[RequestRecord] = field(default_factory=list)


class Progress:
    """One line on stderr per finished request, so a long run shows where it is."""

    def __init__(self, target: str, concurrency: int, total: int) -> None:
        self.label = f"{target:<8} c={concurrency:<3}"
        self.total = total
        self.done = 0
        self.errors = 0
        self.started = time.perf_counter()

    def update(self, record: RequestRecord) -> None:
        self.done += 1
        self.errors += record.error is not None
        if record.error:
            what = f"error: {record.error}"
        elif record.ttfa is None:  # the model ended at once (<|im_end|> first): no audio, so no ttfa
            what = f"no audio      latency {record.latency:6.2f} s"
        else:
            what = f"ttfa {record.ttfa:6.2f} s  latency {record.latency:6.2f} s"
        print(
            f"[bench] {self.label} {self.done:>3}/{self.total}  errors {self.errors}  "
            f"{time.perf_counter() - self.started:7.1f} s  | {what}",
            file=sys.stderr,
            flush=True,
        )


async def run_level(target: Target, concurrency: int, specs: Sequence[RequestSpec]) -> LevelRun:
    """Send `specs` with `concurrency` closed-loop workers; the level's wall time ends with its last answer."""
    pending = deque(specs)
    progress = Progress(target.name, concurrency, len(specs))
    run = LevelRun(target.name, concurrency, 0.0)

    async def worker() -> None:
        while pending:
            record = await target.run(pending.popleft())
            run.records.append(record)
            progress.update(record)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    run.wall_s = time.perf_counter() - started
    return run
