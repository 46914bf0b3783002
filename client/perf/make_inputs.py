"""Write the perf_analyzer input files of this folder: one request per model, FP32 values as JSON floats.

python -m client.perf.make_inputs [--output-dir client/perf]

perf_analyzer reads `--input-data FILE.json` ({"data": [{NAME: values | {"content": [...], "shape": [...]}}]})
and refuses an FP32 value written as an integer ("unable to find float data"), hence `float()` everywhere.
The files are committed; rerun this after changing a tensor contract.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fish_speech_triton.audio import synthetic_speech
from fish_speech_triton.tools.cli import run_cli

HERE = Path(__file__).resolve().parent
TEXT = "Benchmarks tell us how fast the service speaks."
# Short on purpose: perf_analyzer measures the serving path; the length sets how long each request runs.
MAX_NEW_TOKENS = 32
REFERENCE_RATE = 16000
REFERENCE_SECONDS = 0.5
CODE_FRAMES = 32


def _floats(values: np.ndarray) -> list[float]:
    return [round(float(v), 5) for v in values.reshape(-1)]


def sampling() -> dict[str, list]:
    return {"MAX_NEW_TOKENS": [MAX_NEW_TOKENS], "SEED": [42], "TOP_P": [0.7], "TEMPERATURE": [0.7]}


def model_inputs() -> dict[str, dict[str, object]]:
    """One request per model: the ensemble and llama_semantic speak TEXT; the codec models get fixed tensors."""
    audio = synthetic_speech(REFERENCE_SECONDS, REFERENCE_RATE, seed=0)
    codes = np.random.default_rng(0).integers(0, 1000, (8, CODE_FRAMES))
    return {
        "ensemble": {"TEXT": [TEXT], **sampling()},
        "llama_semantic": {"TEXT": [TEXT], **sampling()},
        "vqgan_encoder": {
            "AUDIO": {"content": _floats(audio), "shape": [audio.size]},
            "SAMPLE_RATE": [REFERENCE_RATE],
        },
        "vqgan_decoder": {"CODES": {"content": codes.reshape(-1).tolist(), "shape": list(codes.shape)}},
    }


def write_inputs(output_dir: Path) -> list[Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for model, request in model_inputs().items():
        path = output_dir / f"{model}.json"
        path.write_text(json.dumps({"data": [request]}) + "\n")
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m client.perf.make_inputs", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--output-dir", type=Path, default=HERE)
    args = parser.parse_args(argv)
    for path in write_inputs(args.output_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
