"""Per-level summaries of a benchmark run and the ratios ours / baseline."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from bench.workload import LevelRun

PERCENTILES = (50, 90, 99)
# (summary key, better when) for the ratios ours / baseline: < 1 is better for times, > 1 for throughput.
RATIO_KEYS = {
    "ttfa_p50_s": "lower",
    "ttfa_p90_s": "lower",
    "ttfa_p99_s": "lower",
    "latency_p50_s": "lower",
    "rtf_p50": "lower",
    "audio_s_per_wall_s": "higher",
}


def _percentiles(name: str, values: Sequence[float], suffix: str = "_s") -> dict[str, float]:
    return {
        f"{name}_p{p}{suffix}": float(np.percentile(values, p)) if values else math.nan for p in PERCENTILES
    }


def summarize(run: LevelRun) -> dict[str, float | int | str]:
    """TTFA, latency and RTF percentiles over the successful requests; throughput over the level's wall time."""
    ok = [r for r in run.records if r.error is None]
    audio = sum(r.audio_seconds for r in ok)
    return {
        "target": run.target,
        "concurrency": run.concurrency,
        "requests": len(run.records),
        "errors": len(run.records) - len(ok),
        "wall_s": run.wall_s,
        **_percentiles("ttfa", [r.ttfa for r in ok if r.ttfa is not None]),
        **_percentiles("latency", [r.latency for r in ok]),
        "latency_mean_s": float(np.mean([r.latency for r in ok])) if ok else math.nan,
        **_percentiles("rtf", [r.latency / r.audio_seconds for r in ok if r.audio_seconds > 0], suffix=""),
        "audio_s": audio,
        "audio_s_per_wall_s": audio / run.wall_s if run.wall_s > 0 else math.nan,
        "requests_per_s": len(ok) / run.wall_s if run.wall_s > 0 else math.nan,
    }


def ratios(ours: dict, baseline: dict) -> dict[str, float]:
    """ours / baseline for each key of RATIO_KEYS (nan where the baseline has no value)."""
    out = {}
    for key in RATIO_KEYS:
        a, b = ours.get(key, math.nan), baseline.get(key, math.nan)
        out[key] = a / b if b and not math.isnan(b) else math.nan
    return out
