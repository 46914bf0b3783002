"""The benchmark's outputs: a JSON report, a markdown table and a PNG plot (matplotlib, the `bench` extra)."""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

from fish_speech_triton.errors import InputError

TABLE_COLUMNS = (
    ("TTFA p50", "ttfa_p50_s"),
    ("TTFA p90", "ttfa_p90_s"),
    ("TTFA p99", "ttfa_p99_s"),
    ("latency p50", "latency_p50_s"),
    ("RTF p50", "rtf_p50"),
    ("audio s / wall s", "audio_s_per_wall_s"),
)


def json_safe(value: object) -> object:
    """NaN (no value, e.g. no successful request) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    return value


def _cell(value: float | None) -> str:
    return (
        "–" if value is None or math.isnan(value) else f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    )


def markdown_table(report: dict) -> str:
    """One row per (concurrency, target), then ours / baseline per concurrency."""
    header = ["concurrency", "run", *(name for name, _ in TABLE_COLUMNS), "errors"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for level in report["levels"]:
        for target in ("ours", "baseline"):
            row = level.get(target)
            if row is None:
                continue
            cells = [_cell(row[key]) for _, key in TABLE_COLUMNS]
            lines.append(
                f"| {level['concurrency']} | {target} | "
                + " | ".join(cells)
                + f" | {row['errors']}/{row['requests']} |"
            )
        if "ratio" in level:
            cells = [f"**{_cell(level['ratio'][key])}**" for _, key in TABLE_COLUMNS]
            lines.append(f"| {level['concurrency']} | ours / baseline | " + " | ".join(cells) + " | |")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> Path | None:
    """TTFA, latency, RTF and throughput against concurrency, ours and the baseline; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[bench] matplotlib is not installed (pip install '.[bench]'): no plot", file=sys.stderr)
        return None
    panels = (
        ("time to first audio p50 (s)", "ttfa_p50_s"),
        ("latency p50 (s)", "latency_p50_s"),
        ("real-time factor p50", "rtf_p50"),
        ("audio seconds per wall second", "audio_s_per_wall_s"),
    )
    levels = [level["concurrency"] for level in report["levels"]]
    figure, axes = plt.subplots(2, 2, figsize=(10, 7))
    for axis, (title, key) in zip(axes.flat, panels, strict=True):
        for target, style in (("ours", "o-"), ("baseline", "s--")):
            points = [(lv["concurrency"], lv[target][key]) for lv in report["levels"] if target in lv]
            if points:
                axis.plot(*zip(*points, strict=True), style, label=target)
        axis.set_xscale("log", base=2)
        axis.set_xticks(levels, [str(c) for c in levels])
        axis.set_ylim(bottom=0)
        axis.set_xlabel("concurrent requests")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.suptitle(report["title"], fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def prepare_output_dir(output_dir: Path) -> Path:
    """Make `output_dir` and try a file in it: a benchmark fails here, not after its measurement."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as exc:
        raise InputError(f"cannot write the reports to {output_dir}: {exc.strerror or exc}") from exc
    return output_dir


def write_reports(report: dict, output_dir: Path) -> list[Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / "bench.json"
    json_path.write_text(json.dumps(json_safe(report), indent=2) + "\n")
    table_path = output_dir / "bench.md"
    table_path.write_text(f"{report['title']}\n\n{markdown_table(report)}\n")
    png = plot(report, output_dir / "bench.png")
    return [json_path, table_path, *([png] if png else [])]
