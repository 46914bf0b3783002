"""bench.load: the statistics, the reports, and a tiny run of ours against the baseline on a real tritonserver;
bench.first_audio against the same server; bench.lm_step and bench.lm_speed on a small checkpoint; every
tool's checks of its arguments, before it writes or loads a checkpoint."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import codec_speed, first_audio, lm_engine, lm_speed, lm_step, load
from bench.report import markdown_table
from bench.stats import ratios, summarize
from bench.workload import TEXTS, LevelRun, Progress, RequestRecord, RequestSpec, request_specs, run_level
from fish_speech_triton.errors import FishSpeechError, InputError
from fish_speech_triton.hub import CODEC_FILE, LM_FILES
from fish_speech_triton.lm.levers import RUNTIMES
from fish_speech_triton.tools.cli import run_cli
from fish_speech_triton.tools.make_random_checkpoint import RANDOM_MARKER, WRITING


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
    (checkpoint / RANDOM_MARKER).touch()  # a small checkpoint where the benchmark writes a full-size one
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


# --- checkpoints of the in-process LM tools ---------------------------------------------------------------------------


@pytest.fixture
def small_writer(monkeypatch):
    """The LM tools' random checkpoint, small (a full-size one is 1.3 GB); the directories it wrote."""
    from fish_speech_triton.lm.checkpoint import write_random_lm_checkpoint
    from fish_speech_triton.lm.config import DualARConfig

    written = []

    def write(directory, config, **kwargs):
        written.append(Path(directory))
        return write_random_lm_checkpoint(directory, DualARConfig.small(), **kwargs)

    monkeypatch.setattr(lm_speed, "write_random_lm_checkpoint", write)
    return written


def test_a_real_checkpoint_is_measured_as_it_is_and_said_so(
    lm_small_checkpoint, lm_single_thread, small_writer, tmp_path, capsys
):
    real = tmp_path / "real"
    shutil.copytree(lm_small_checkpoint, real)  # a downloaded checkpoint: its LM files, no marker of ours
    before = {f.name: f.read_bytes() for f in real.iterdir()}
    args = ["--checkpoint-dir", str(real), "--frames", "3", "--warmup", "1", "--threads", "1"]
    assert run_cli(lm_speed.main, [*args, "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert f"DualAR 3+2 layers, dim 128, the checkpoint's weights ({real}), cpu" in out
    assert "random" not in out and small_writer == []
    assert {f.name: f.read_bytes() for f in real.iterdir()} == before
    decode = float(out.split("decode ")[1].split(" frames/s")[0])
    assert decode > 0  # the prefill is timed inside the timed run


def test_a_random_checkpoint_goes_only_into_a_new_empty_or_own_directory(small_writer, tmp_path):
    new = tmp_path / "new"
    assert lm_speed.ensure_checkpoint(new) == new and small_writer == [new]
    assert "random weights" in lm_speed.describe_checkpoint(new)
    lm_speed.ensure_checkpoint(new)
    assert small_writer == [new]  # written once
    (new / RANDOM_MARKER).write_text(WRITING)  # a write of ours that was interrupted
    lm_speed.ensure_checkpoint(new)
    assert small_writer == [new, new]
    empty = tmp_path / "empty"
    empty.mkdir()
    lm_speed.ensure_checkpoint(empty)
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.pth").write_text("real weights, the rest of the files not yet downloaded")
    with pytest.raises(InputError, match="holds no LM checkpoint"):
        lm_speed.ensure_checkpoint(other)
    assert small_writer == [new, new, empty]
    assert (other / "model.pth").read_text().startswith("real weights")


# --- arguments: checked before anything is written or loaded, errors in one line ------------------------------------


@pytest.fixture
def nothing_loaded(monkeypatch):
    """Writing or loading a checkpoint fails the test: every argument is checked before."""

    def loaded(*args, **kwargs):
        raise AssertionError("a checkpoint was written or loaded before the arguments were checked")

    for module in (lm_speed, lm_engine, lm_step):
        monkeypatch.setattr(module, "load_lm", loaded)
    monkeypatch.setattr(lm_speed, "write_random_lm_checkpoint", loaded)
    monkeypatch.setattr(codec_speed, "load_codec_config", loaded)


@pytest.mark.parametrize(
    ("tool", "args", "message"),
    [
        (lm_speed, ["--frames", "1"], "argument --frames: must be at least 2, got 1"),
        (lm_speed, ["--threads", "0"], "argument --threads: must be at least 1, got 0"),
        (lm_speed, ["--warmup", "0"], "argument --warmup: must be at least 1, got 0"),
        (lm_engine, ["--concurrency", "1", "0"], "argument --concurrency: must be at least 1, got 0"),
        (lm_engine, ["--frames", "-3"], "argument --frames: must be at least 1, got -3"),
        (lm_engine, ["--threads", "-1"], "argument --threads: must be at least 0, got -1"),
        (
            lm_engine,
            ["--compile-decode"],
            "--compile-decode compiles the fast decode step: it needs --fast-decode",
        ),
        (lm_step, ["--rows", "0"], "argument --rows: must be at least 1, got 0"),
        (lm_step, ["--threads", "-2"], "argument --threads: must be at least 0, got -2"),
        (lm_step, ["--cached", "1000"], "need 1036 positions per row; the model holds 1024"),
        (codec_speed, ["--repeats", "0"], "argument --repeats: must be at least 1, got 0"),
        (codec_speed, ["--seconds", "0"], "argument --seconds: must be positive, got 0"),
        (codec_speed, ["--threads", "0"], "argument --threads: must be at least 1, got 0"),
    ],
)
def test_numbers_are_checked_before_anything_is_loaded(
    tool, args, message, nothing_loaded, lm_small_checkpoint, tmp_path, capsys
):
    checkpoint = tmp_path / "lm"  # a small one of ours (max_seq_len 1024)
    shutil.copytree(lm_small_checkpoint, checkpoint)
    (checkpoint / RANDOM_MARKER).touch()
    where = [] if tool is codec_speed else ["--checkpoint-dir", str(checkpoint)]
    with pytest.raises(SystemExit) as exit_info:
        tool.main([*where, *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_an_unknown_device_is_one_line_before_anything_is_loaded(nothing_loaded, tmp_path, capsys):
    for tool in (lm_speed, lm_engine):
        assert run_cli(tool.main, ["--device", "gpu", "--checkpoint-dir", str(tmp_path / "none")]) == 2
        assert capsys.readouterr().err.strip() == "error: unknown device 'gpu': use cpu, cuda or cuda:N"
    assert not (tmp_path / "none").exists()


def test_the_tools_run_from_the_command_line_report_errors_in_one_line(lm_small_checkpoint, tmp_path):
    ours = tmp_path / "ours"  # a checkpoint of ours, as the old tools took it: no checkpoint is written
    shutil.copytree(lm_small_checkpoint, ours)
    (ours / RANDOM_MARKER).touch()
    broken = tmp_path / "broken"
    shutil.copytree(ours, broken)
    (broken / "config.json").write_text("{")
    commands = {
        "lm_speed": ["--device", "gpu", "--checkpoint-dir", str(ours)],
        "lm_engine": ["--device", "gpu", "--checkpoint-dir", str(ours)],
        "lm_step": ["--checkpoint-dir", str(broken)],
        "codec_speed": ["--checkpoint-path", str(tmp_path / "missing.pth")],
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("FISH_SPEECH_TRITON_DEBUG", None)
    runs = {
        tool: subprocess.Popen(
            [sys.executable, "-m", f"bench.{tool}", *args],
            cwd=Path(__file__).resolve().parents[1],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tool, args in commands.items()
    }
    for tool, process in runs.items():
        _, err = process.communicate(timeout=300)
        assert process.returncode == 2 and "Traceback" not in err, (tool, err)
        assert err.strip().splitlines()[-1].startswith("error: "), (tool, err)


def test_help_says_the_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # no line breaks inside the texts looked for
    for tool, expected in (
        (lm_speed, "(default artifacts/bench/lm-full-random)"),
        (lm_engine, "frames per request (default 64)"),
        (lm_step, "positions already in each row's cache (default 100)"),
        (load, "text segment length (100 to 1000), both runs (default 200)"),
        (first_audio, "frames per request (default 32)"),
    ):
        with pytest.raises(SystemExit):
            tool.main(["--help"])
        assert expected in capsys.readouterr().out, tool.__name__
    with pytest.raises(SystemExit):
        first_audio.main(["--help"])
    assert "baseline" not in capsys.readouterr().out  # it runs none


def test_codec_speed_takes_a_codec_config(codec_small_config_file, capsys):
    args = ["--codec-config", str(codec_small_config_file), "--seconds", "0.5", "--repeats", "1"]
    assert codec_speed.main([*args, "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "0.5 s of audio (" in out and "onnxruntime CPU int8 decoder" in out


# --- bench.load and bench.first_audio: checked up front, results kept --------------------------------------------------


def fake_checkpoint(directory: Path, files=(*LM_FILES, CODEC_FILE)) -> Path:
    directory.mkdir()
    for name in files:
        (directory / name).write_text("")
    return directory


def test_load_checks_the_checkpoint_s_lm_files_and_the_output_directory_first(tmp_path, capsys):
    codec_only = fake_checkpoint(tmp_path / "codec-only", files=(CODEC_FILE,))
    args = ["--url", "127.0.0.1:1", "--quick", "--output-dir", str(tmp_path / "out")]
    assert run_cli(load.main, [*args, "--checkpoint-dir", str(codec_only)]) == 2
    assert "has no config.json, model.pth, tokenizer.tiktoken, special_tokens.json" in capsys.readouterr().err
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    for tool, extra in ((load, ["--no-baseline"]), (first_audio, [])):
        args = ["--url", "127.0.0.1:1", "--quick" if tool is load else "--references=1", *extra]
        assert run_cli(tool.main, [*args, "--output-dir", str(not_a_directory / "out")]) == 2
        assert f"cannot write the reports to {not_a_directory / 'out'}" in capsys.readouterr().err


def test_load_saves_ours_before_the_baseline_and_prints_before_writing(tmp_path, monkeypatch, capsys):
    async def ours(url, plan):
        return [LevelRun("ours", 1, 1.0, [record(0, 0.5, 1.0)])]

    def broken_baseline(*args):
        raise FishSpeechError("the baseline broke")

    monkeypatch.setattr(load, "sweep_ours", ours)
    monkeypatch.setattr(load, "sweep_baseline", broken_baseline)
    monkeypatch.setattr(load, "warn_if_other_checkpoint", lambda *args: None)
    checkpoint = fake_checkpoint(tmp_path / "ck")
    out = tmp_path / "out"
    args = ["--url", "127.0.0.1:1", "--checkpoint-dir", str(checkpoint), "--concurrency", "1", "--quick"]
    assert run_cli(load.main, [*args, "--output-dir", str(out)]) == 2
    assert "error: the baseline broke" in capsys.readouterr().err
    report = json.loads((out / "bench.json").read_text())
    assert report["levels"][0]["ours"]["requests"] == 1 and "baseline" not in report["levels"][0]

    writes = []

    def full_disk(report, output_dir):
        writes.append(report)
        if len(writes) == 2:  # the final report
            raise OSError("No space left on device")
        return [output_dir / "bench.json"]

    monkeypatch.setattr(
        load, "sweep_baseline", lambda *args: [LevelRun("baseline", 1, 2.0, [record(0, 2, 2)])]
    )
    monkeypatch.setattr(load, "write_reports", full_disk)
    assert run_cli(load.main, [*args, "--output-dir", str(out)]) == 2
    captured = capsys.readouterr()
    assert "| 1 | ours / baseline |" in captured.out and "No space left on device" in captured.err


def test_first_audio_prints_its_result_before_writing_it(tmp_path, monkeypatch, capsys):
    summary = {"median_s": 1.0, "p90_s": 1.0, "min_s": 1.0, "max_s": 1.0, "at_most_target": 1, "count": 1}
    result = {"requests": [], "new_reference": summary, "same_reference_again_s": 0.5}
    monkeypatch.setattr(first_audio, "run", lambda url, args: dict(result))

    def full_disk(*args):
        raise OSError("disk full")

    monkeypatch.setattr(first_audio.Path, "write_text", full_disk)
    args = ["--url", "127.0.0.1:1", "--references", "1", "--output-dir", str(tmp_path)]
    assert run_cli(first_audio.main, args) == 2
    captured = capsys.readouterr()
    assert "time to first audio, new 10 s reference (1 requests): median 1.000 s" in captured.out
    assert "error: disk full" in captured.err


def test_url_runs_say_which_options_they_ignore_and_write_no_checkpoint(tmp_path, monkeypatch, capsys):
    def written(*args):
        raise AssertionError("a random checkpoint was written")

    monkeypatch.setattr("bench.server.write_random_checkpoint", written)
    args = [
        "--url",
        "127.0.0.1:1",
        "--kv-slots",
        "3",
        "--weight-quantization",
        "int4",
        "--codec-threads",
        "1",
    ]
    out = ["--output-dir", str(tmp_path)]
    assert run_cli(load.main, [*args, "--quick", "--no-baseline", *out]) == 2
    err = capsys.readouterr().err
    assert err.count("WARNING") == 1 and "no Triton server reachable at 127.0.0.1:1" in err
    assert "ignored: --weight-quantization, --codec-threads, --kv-slots" in err
    args = ["--url", "127.0.0.1:1", "--checkpoint-dir", str(tmp_path), "--precision", "fp32", *out]
    assert run_cli(first_audio.main, [*args, "--references", "1"]) == 2
    assert "ignored: --checkpoint-dir, --precision" in capsys.readouterr().err


# --- bench.load: bad chunk lengths and failed requests ----------------------------------------------------------------


def test_chunk_length_is_checked_at_start_up(capsys):
    for value in ("0", "99", "1001"):
        with pytest.raises(SystemExit) as exit_info:
            load.main(["--chunk-length", value, "--quick", "--url", "127.0.0.1:1"])
        assert exit_info.value.code == 2
        assert f"argument --chunk-length: must be from 100 to 1000, got {value}" in capsys.readouterr().err


def test_a_failed_warm_up_stops_the_run():
    class Refused:
        name = "ours"

        async def run(self, spec: RequestSpec) -> RequestRecord:
            return record(spec.index, 0, 0, error="refused: CHUNK_LENGTH must be in [100, 1000], got 0")

    plan = load.Plan(levels=[1], rounds=1, max_new_tokens=8, chunk_length=0)
    with pytest.raises(FishSpeechError, match="ours: the warm-up request failed: refused: CHUNK_LENGTH"):
        asyncio.run(load.sweep(Refused(), plan))


def test_any_exception_of_a_request_is_recorded_as_its_failure(monkeypatch):
    from bench.baseline import EagerBaseline
    from bench.triton_target import TritonTarget

    def split_text(*args):
        raise ValueError("chunk_length must be positive, got 0")

    baseline = object.__new__(EagerBaseline)  # its model is not needed: synthesis fails
    baseline.worker = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    baseline.synthesize = split_text
    try:
        failed = asyncio.run(baseline.run(RequestSpec(0, TEXTS[0], 1)))
    finally:
        baseline.close()
    assert failed.error == "ValueError: chunk_length must be positive, got 0" and failed.ttfa is None

    async def stream_async(*args):
        raise RuntimeError("the stream broke")
        yield

    monkeypatch.setattr("bench.triton_target.stream_async", stream_async)
    failed = asyncio.run(TritonTarget(None, 8, 200).run(RequestSpec(0, TEXTS[0], 1)))
    assert failed.error == "RuntimeError: the stream broke" and failed.ttfa is None
