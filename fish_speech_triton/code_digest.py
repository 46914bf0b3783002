"""Digests of the repository builder's code and templates: a model repository built by other code is rebuilt,
not reused (`serve.ensure_repository`, the container entrypoint)."""

from __future__ import annotations

import hashlib
from pathlib import Path

BUILDER_DIRS = ("export", "model_repository")  # the builder's code and the repository templates


def tree_digest(root: Path) -> str:
    """SHA-256 over every file under `root` (relative path and contents), caches left out."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def builder_digest(app_dir: Path) -> dict[str, str]:
    """`tree_digest` of each of `BUILDER_DIRS` under `app_dir` (the project's root)."""
    return {name: tree_digest(app_dir / name) for name in BUILDER_DIRS}
