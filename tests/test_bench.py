"""bench.load: the statistics, the reports, and a tiny run of ours against the baseline on a real tritonserver;
bench.first_audio against the same server; bench.lm_step on a small checkpoint."""

from __future__ import annotations

import asyncio
import json
import math
import shutil

import numpy as np
import pytest

from bench import first_audio, lm_engine, lm_step, load
from bench.lm_speed import DONE_MARKER
from bench.report import markdown_table
from bench.stats import ratios, summarize
from bench.workload import TEXTS, LevelRun, Progress, RequestRecord, RequestSpec, request_specs, run_level
from fish_speech_triton.lm.levers import RUNTIMES
from fish_speech_triton.tools.cli import run_cli


def record(
    index: int, ttfa: float, latency: float, audio: float = 2.0, error: str | None = None
) -> RequestRecord:
    return RequestRecord(index, 10.0, 10.0 + latency, None if error else 10.0 + ttfa, audio, error)


def test_summary_percentiles_throughput_and_errors():
    records = [record(i, ttfa=0.1 * (i + 1), latency=1.0 + i) for i in range(10)]
    records.append(record(10, 0, 0, error="boom"))
    summary = summarize(LevelRun("ours", 4, 5.0, records))
    assert summary["requests"] == 11 and summary["errors"] == 1
    assert summary["ttfa_p50_s"] == pytest.approx(0.55) and summary["ttfa_p90_s"] == pytest.approx(0.91)
    assert summary["latency_p50_s"] == pytest.approx(5.5) and summary["latency_p99_s"] == pytest.approx(9.91)
    assert summary["rtf_p50"] == pytest.approx(5.5 / 2.0)
    assert summary["audio_s_per_wall_s"] == pytest.approx(20.0 / 5.0)  # failed requests bring no audio
    none = summarize(LevelRun("baseline", 1, 1.0, [record(0, 0, 0, error="x")]))
    assert math.isnan(none["ttfa_p50_s"]) and none["audio_s_per_wall_s"] == 0


def test_ratios_and_table():
    ours = summarize(LevelRun("ours", 2, 2.0, [record(0, 0.5, 4.0), record(1, 0.5, 4.0)]))
    base = summarize(LevelRun("baseline", 2, 8.0, [record(0, 4.0, 4.0), record(1, 8.0, 8.0)]))
    r = ratios(ours, base)
    assert r["ttfa_p50_s"] == pytest.approx(0.5 / 6.0) and r["audio_s_per_wall_s"] == pytest.approx(4.0)
    table = markdown_table({"levels": [{"concurrency": 2, "ours": ours, "baseline": base, "ratio": r}]})
    assert "| 2 | ours / baseline | **0.0833** |" in table and "| 2 | baseline | 6 |" in table


def test_closed_loop_keeps_c_requests_in_flight_and_sends_every_spec():
    class Echo:
        name = "echo"
        in_flight = peak = 0

        async def run(self, spec: RequestSpec) -> RequestRecord:
            Echo.in_flight += 1
            Echo.peak = max(Echo.peak, Echo.in_flight)
            await asyncio.sleep(0.01)
            Echo.in_flight -= 1
            return record(spec.index, 0.0, 0.01)

    run = asyncio.run(run_level(Echo(), 3, request_specs(7)))
    assert Echo.peak == 3 and sorted(r.index for r in run.records) == list(range(7))
    assert [s.text for s in request_specs(9)][8] == TEXTS[0]  # the text set repeats, the seeds do not
    assert len({s.seed for s in request_specs(9)}) == 9


def test_quick_run_against_the_server_reports_ours_the_baseline_and_ratios(
    triton_deployment, tmp_path, capsys
):
    out = tmp_path / "bench"
    args = ["--url", triton_deployment.grpc_url, "--checkpoint-dir", str(triton_deployment.checkpoint.lm_dir)]
    assert run_cli(load.main, [*args, "--quick", "--output-dir", str(out)]) == 0
    captured = capsys.readouterr()
    assert "[bench] ours     c=2     2/2  errors 0" in captured.err  # progress while it runs
    assert "| 1 | ours / baseline |" in captured.out
    report = json.loads((out / "bench.json").read_text())
    assert [level["concurrency"] for level in report["levels"]] == [1, 2]
    for level in report["levels"]:
        ours, base = level["ours"], level["baseline"]
        assert ours["errors"] == 0 and base["errors"] == 0
        assert ours["requests"] == base["requests"] == level["concurrency"]
        # same texts, seeds and MAX_NEW_TOKENS on the same weights: the same audio
        assert ours["audio_s"] == pytest.approx(base["audio_s"])
        assert base["ttfa_p50_s"] == pytest.approx(base["latency_p50_s"])  # not streamed
        assert all(value is not None and value > 0 for value in level["ratio"].values())
    assert (out / "bench.png").stat().st_size > 10_000
    assert (out / "bench.md").read_text().count("ours / baseline") == 2


def test_start_server_runs_its_own_tritonserver(triton_deployment, tmp_path):
    out = tmp_path / "own"
    args = ["--start-server", "--checkpoint-dir", str(triton_deployment.checkpoint.lm_dir), "--quick"]
    assert run_cli(load.main, [*args, "--concurrency", "1", "--no-baseline", "--output-dir", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["levels"][0]["ours"]["errors"] == 0 and "baseline" not in report["levels"][0]
    assert (out / "model_repository" / "ensemble" / "config.pbtxt").is_file()


def test_bad_arguments_are_one_line(capsys):
    assert run_cli(load.main, ["--concurrency", "0,2", "--quick"]) == 2
    assert capsys.readouterr().err.strip() == "error: --concurrency levels must be at least 1, got '0,2'"
    assert run_cli(load.main, ["--url", "127.0.0.1:1", "--quick", "--no-baseline"]) == 2
    assert "no Triton server reachable at 127.0.0.1:1" in capsys.readouterr().err
    for flag in ("--max-new-tokens", "--kv-slots"):  # 0 is refused, not taken for "the default"
        assert run_cli(load.main, [flag, "0", "--quick", "--url", "127.0.0.1:1"]) == 2
        assert "must be at least 1" in capsys.readouterr().err


def test_a_request_that_ends_without_audio_is_reported_not_fatal(capsys):
    progress = Progress("ours", 1, 2)
    progress.update(RequestRecord(index=0, started=1.0, finished=1.5))  # <|im_end|> first: no audio
    progress.update(RequestRecord(index=1, started=1.0, finished=2.0, first_audio_at=1.2, audio_seconds=1.0))
    lines = capsys.readouterr().err.splitlines()
    assert "no audio      latency   0.50 s" in lines[0] and "ttfa   0.20 s" in lines[1]


def test_first_audio_sends_new_references_then_one_again(triton_deployment, tmp_path, capsys):
    references = [first_audio.new_reference(i, 1.0) for i in (0, 1, 10)]
    assert [r.size for r in references] == [44100, 46305, 44100]  # +50 ms each, in ten steps
    assert references[0].dtype == np.float32 and 0.3 < np.abs(references[0]).max() < 1
    assert not np.allclose(references[0], references[2], atol=0.05)  # same length, other audio
    salted = first_audio.new_reference(0, 1.0, salt=7)  # another run's reference 0
    assert salted.size == 44100 and not np.allclose(salted, references[0], atol=0.05)
    out = tmp_path / "first-audio"
    args = ["--url", triton_deployment.grpc_url, "--references", "2", "--reference-seconds", "1"]
    assert run_cli(first_audio.main, [*args, "--max-new-tokens", "4", "--output-dir", str(out)]) == 0
    captured = capsys.readouterr()
    assert "time to first audio, new 1 s reference (2 requests): median" in captured.out
    assert "[first-audio]   warm-up: reference 1.10 s" in captured.err  # progress, warm-up not counted
    assert "[first-audio] references of salt " in captured.err
    report = json.loads((out / "first_audio.json").read_text())
    assert [r["request"] for r in report["requests"]] == ["new 1", "new 2", "again"]
    for r in report["requests"]:
        assert 0 < r["ttfa_s"] <= r["latency_s"] and r["audio_s"] > 0
    summary = report["new_reference"]
    assert summary["count"] == 2 and summary["min_s"] <= summary["median_s"] <= summary["max_s"]
    assert report["same_reference_again_s"] == report["requests"][-1]["ttfa_s"]
    assert run_cli(first_audio.main, ["--references", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err


def test_lm_step_times_every_runtime_and_row_count(lm_small_checkpoint, lm_single_thread, tmp_path, capsys):
    checkpoint = tmp_path / "lm"
    shutil.copytree(lm_small_checkpoint, checkpoint)
    (checkpoint / DONE_MARKER).touch()  # a small checkpoint where the benchmark writes a full-size one
    args = ["--checkpoint-dir", str(checkpoint), "--rows", "1", "3", "--rounds", "1", "--steps", "2"]
    assert lm_step.main([*args, "--cached", "4", "--threads", "1"]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| 1 |")]
    assert [(r[1], r[2]) for r in rows] == [(rt, n) for n in ("1", "3") for rt in RUNTIMES]
    assert all(float(r[3]) > 0 and float(r[4]) > 0 for r in rows)


def test_lm_engine_profile_needs_a_gpu(capsys):
    with pytest.raises(SystemExit) as exit_info:
        lm_engine.main(["--profile", "--device", "cpu"])
    assert exit_info.value.code == 2
    assert "--profile counts GPU kernels: it needs --device cuda" in capsys.readouterr().err
