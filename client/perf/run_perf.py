"""perf_analyzer over a concurrency sweep against a running server: the ensemble and each stage.

python -m client.perf.run_perf --url 127.0.0.1:8001 [--models ensemble,llama_semantic] [--concurrency-range 1:8:2]

Each model is driven with its input file of this folder (`<model>.json`); the decoupled ones (the ensemble
and llama_semantic) with `--streaming`. For those, perf_analyzer 2.51 prints "using the first response for
measuring latency" but reports the whole stream's latency (measured: first chunk after 2.4 s, stream done
after 8.7 s, perf_analyzer 8.9 s); "Response Throughput" counts chunks. Time to first audio comes from
`bench.load`. The report goes to the terminal and the CSV to `--output-dir/<model>.csv`. Arguments after
`--` go to perf_analyzer as they are, e.g. `-- --measurement-mode count_windows --measurement-request-count 3`
when long requests keep time windows from stabilising.

perf_analyzer (from the tritonclient wheel) needs libb64.so.0d and libcudart.so.12; the Triton wheel
(nvidia-pytriton) ships both under other names, so they are linked under those names in a temporary
folder on LD_LIBRARY_PATH.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from client.triton_stream import DEFAULT_URL, connect
from fish_speech_triton.errors import FishSpeechError
from fish_speech_triton.tools.cli import run_cli

HERE = Path(__file__).resolve().parent
MODELS = ("ensemble", "llama_semantic", "vqgan_encoder", "vqgan_decoder")
DECOUPLED = frozenset({"ensemble", "llama_semantic"})
CACHED_ENCODER = (
    "[perf] vqgan_encoder: its input file repeats one recording, whose codes the model keeps after the first "
    "request: these figures are its cache's; bench.first_audio measures encoding new references"
)
# soname perf_analyzer asks for -> glob of the file in nvidia_pytriton.libs
LIBRARIES = {"libb64.so.0d": "libb64-*.so.0d", "libcudart.so.12": "libcudart-*.so.12*"}


def perf_analyzer_binary() -> Path:
    found = shutil.which(
        "perf_analyzer", path=os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", "")))
    )
    if found is None:
        raise FishSpeechError(
            "perf_analyzer not found: pip install 'tritonclient[all]==2.51.0' (its wheel ships it)"
        )
    return Path(found)


def library_dir(scratch: Path) -> Path:
    """A folder of symlinks that gives the Triton wheel's bundled libraries the sonames perf_analyzer wants."""
    try:
        import pytriton
    except ImportError as exc:
        raise FishSpeechError(
            "perf_analyzer's libraries come from the 'server' extra (nvidia-pytriton)"
        ) from exc
    bundled = Path(pytriton.__file__).resolve().parents[1] / "nvidia_pytriton.libs"
    for soname, pattern in LIBRARIES.items():
        matches = sorted(bundled.glob(pattern))
        if not matches:
            raise FishSpeechError(f"{bundled} has no {pattern}, which perf_analyzer needs as {soname}")
        (scratch / soname).symlink_to(matches[0])
    return scratch


def perf_command(
    binary: Path, model: str, url: str, args: argparse.Namespace, extra: Sequence[str]
) -> list[str]:
    command = [
        str(binary),
        "-m",
        model,
        "-i",
        "grpc",
        "-u",
        url,
        "--input-data",
        str(args.input_dir / f"{model}.json"),
        "--concurrency-range",
        args.concurrency_range,
        "--measurement-interval",
        str(args.measurement_interval),
        "-f",
        str(args.output_dir / f"{model}.csv"),
    ]
    if model in DECOUPLED:
        command.append("--streaming")
    return [*command, *extra]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        prog="python -m client.perf.run_perf",
        description=__doc__.split("\n\n")[0],
        epilog="Arguments after -- go to perf_analyzer as they are.",
    )
    parser.add_argument("--url", default=DEFAULT_URL, help=f"Triton gRPC address (default {DEFAULT_URL})")
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated models to measure (default %(default)s)"
    )
    parser.add_argument(
        "--concurrency-range",
        default="1:4",
        help="START:END[:STEP] concurrent requests (default %(default)s)",
    )
    parser.add_argument(
        "--measurement-interval",
        type=int,
        default=5000,
        help="window per measurement, ms (default %(default)s)",
    )
    parser.add_argument(
        "--input-dir",
        type=Path,
        default=HERE,
        help="where <model>.json input files are (default: this package's folder)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("build") / "perf",
        help="CSV reports go here (default %(default)s)",
    )
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown or not models:
        raise FishSpeechError(f"--models must name some of {', '.join(MODELS)}; got {args.models!r}")
    binary = perf_analyzer_binary()
    for model in models:
        connect(args.url, model)  # a clear error before perf_analyzer's own
    args.output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="perf-analyzer-libs-") as scratch:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(library_dir(Path(scratch))), env.get("LD_LIBRARY_PATH", "")) if p
        )
        for model in models:
            command = perf_command(binary, model, args.url, args, extra)
            print(f"[perf] {model}: {' '.join(command)}", file=sys.stderr, flush=True)
            if model == "vqgan_encoder":
                print(CACHED_ENCODER, file=sys.stderr, flush=True)
            code = subprocess.run(command, env=env, check=False).returncode  # noqa: S603
            if code != 0:
                raise FishSpeechError(
                    f"perf_analyzer failed on {model} (exit code {code}); its output is above"
                )
    print(f"[perf] CSV reports in {args.output_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
