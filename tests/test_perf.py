"""perf_analyzer through client/perf/run_perf.py against a real tritonserver, and its committed input files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from client.perf import make_inputs

PERF_DIR = Path(make_inputs.__file__).resolve().parent


def test_committed_input_files_are_current(tmp_path):
    for path in make_inputs.write_inputs(tmp_path):
        assert path.read_text() == (PERF_DIR / path.name).read_text(), (
            f"rerun python -m client.perf.make_inputs ({path.name})"
        )


def test_fp32_values_are_written_as_floats():
    encoder = json.loads((PERF_DIR / "vqgan_encoder.json").read_text())["data"][0]
    assert all(isinstance(v, float) for v in encoder["AUDIO"]["content"])
    ensemble = json.loads((PERF_DIR / "ensemble.json").read_text())["data"][0]
    assert isinstance(ensemble["TOP_P"][0], float) and isinstance(ensemble["TEMPERATURE"][0], float)


def run_perf(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "client.perf.run_perf", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=240)


def test_perf_analyzer_streams_the_ensemble_and_reports_throughput(triton_deployment, tmp_path):
    done = run_perf(
        "--url", triton_deployment.grpc_url, "--models", "ensemble,vqgan_decoder", "--concurrency-range", "1:2",
        "--measurement-interval", "800", "--output-dir", "perf",
        "--", "--stability-percentage", "1000", "--max-trials", "3",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Detected decoupled model" in done.stdout  # --streaming on the ensemble
    for concurrency in (1, 2):
        assert f"Concurrency: {concurrency}, throughput:" in done.stdout
    assert done.stdout.count("Throughput:") >= 4
    for model in ("ensemble", "vqgan_decoder"):
        assert (tmp_path / "perf" / f"{model}.csv").read_text().startswith("Concurrency,")


def test_perf_errors_are_one_line(tmp_path):
    done = run_perf("--url", "127.0.0.1:1", "--models", "ensemble", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "no Triton server reachable at 127.0.0.1:1" in done.stderr
    done = run_perf("--models", "nope", cwd=tmp_path)
    assert done.returncode == 2 and "--models must name some of" in done.stderr
