"""Print the requirements that the GPU image installs into the Triton container's system Python.

    python3 deploy/container_requirements.py pyproject.toml --torch 2.13.0 --onnxruntime-gpu 1.31.1

They are the project's own dependencies (pyproject.toml) with three changes:
- torch pinned to the given CUDA build;
- `onnxruntime` (CPU only) replaced by `onnxruntime-gpu` with the CUDA and cuDNN libraries it loads. Both
  provide the same `onnxruntime` module, so installing both would leave whichever came last;
- tritonclient without its `http` extra: tritonclient 2.51 pins geventhttpclient<=2.0.2, which has no
  wheel for the container's Python 3.12; our code uses tritonclient.grpc only (tests/test_deploy.py
  checks that nothing imports tritonclient.http).
The image then installs the project itself with --no-deps, so the dependency layer is rebuilt only when
pyproject.toml or a pin changes.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRAS = re.compile(r"\[([^\]]*)\]")
DROPPED_EXTRAS = {"tritonclient": {"http"}}


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def drop_extras(requirement: str, unwanted: set[str]) -> str:
    def keep(match: re.Match[str]) -> str:
        extras = [e.strip() for e in match.group(1).split(",") if e.strip() and e.strip() not in unwanted]
        return f"[{','.join(extras)}]" if extras else ""

    return _EXTRAS.sub(keep, requirement, count=1)


def container_requirements(pyproject: Path, torch: str, onnxruntime_gpu: str) -> list[str]:
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    names = {requirement_name(dep) for dep in deps}
    for needed in ("torch", "onnxruntime"):
        if needed not in names:
            raise ValueError(f"{pyproject} no longer lists {needed}; update this script and the Dockerfile")
    kept = [
        drop_extras(dep.split("#")[0].strip(), DROPPED_EXTRAS.get(requirement_name(dep), set()))
        for dep in deps
        if requirement_name(dep) not in ("torch", "onnxruntime")
    ]
    return [f"torch=={torch}", f"onnxruntime-gpu[cuda,cudnn]=={onnxruntime_gpu}", *kept]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--torch", required=True, help="torch version (a CUDA build)")
    parser.add_argument("--onnxruntime-gpu", required=True, help="onnxruntime-gpu version")
    args = parser.parse_args(argv)
    print("\n".join(container_requirements(args.pyproject, args.torch, args.onnxruntime_gpu)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
