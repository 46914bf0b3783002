"""What a built model repository depends on: digests of the builder's code and templates, and stamps of the
checkpoint files it was built from. A repository built by other code or from other files is rebuilt, not
reused (`serve.ensure_repository`, the container entrypoint)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

# The builder's code, the repository templates, and the code baked into the exported codec graphs (the
# codec's modules; audio.py makes the int8 calibration speech).
BUILDER_PATHS = ("export", "model_repository", "fish_speech_triton/codec", "fish_speech_triton/audio.py")


def tree_digest(root: Path) -> str:
    """SHA-256 over every file under `root` (relative path and contents), caches left out; `root` may be a file."""
    digest = hashlib.sha256()
    if root.is_file():
        base, files = root.parent, [root]
    else:
        base, files = root, sorted(p for p in root.rglob("*") if p.is_file())
    for path in files:
        if "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(base)).encode())
            digest.update(b"\0" + path.read_bytes())
    return digest.hexdigest()


def builder_digest(app_dir: Path) -> dict[str, str]:
    """`tree_digest` of each of `BUILDER_PATHS` under `app_dir` (the project's root)."""
    return {name: tree_digest(app_dir / name) for name in BUILDER_PATHS}


def file_stamps(paths: Iterable[Path]) -> dict[str, list[int]]:
    """Size and modification time (ns) of each existing file, a folder standing for the files in it: a
    checkpoint downloaded again or replaced gives other stamps."""
    stamps: dict[str, list[int]] = {}
    for path in paths:
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if file.is_file():
                info = file.stat()
                stamps[str(file.resolve())] = [info.st_size, info.st_mtime_ns]
    return stamps
