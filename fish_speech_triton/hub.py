"""Finding checkpoint files: a local path, or a Hugging Face repository id downloaded with huggingface_hub."""

from __future__ import annotations

import json
from pathlib import Path

from fish_speech_triton.errors import CheckpointError

DEFAULT_REPO_ID = "fishaudio/fish-speech-1.5"
LM_FILES = ("config.json", "model.pth", "tokenizer.tiktoken", "special_tokens.json")
CODEC_FILE = "firefly-gan-vq-fsq-8x1024-21hz-generator.pth"
CHECKPOINT_FILES = (*LM_FILES, CODEC_FILE)  # the published repository's files that this project reads


def missing_files(directory: Path, names: tuple[str, ...] = CHECKPOINT_FILES) -> list[str]:
    """Which of `names` `directory` lacks (all of them when it is no folder)."""
    return [name for name in names if not (directory / name).is_file()]


def _looks_like_repo_id(value: str) -> bool:
    """`owner/name`, unless `owner` is a local folder (then it is a local path that does not exist)."""
    parts = value.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not value.startswith((".", "/", "~"))
        and not Path(parts[0]).is_dir()
    )


def _download_hint(files: tuple[str, ...]) -> str:
    return (
        f"The published weights: `hf download {DEFAULT_REPO_ID} --local-dir "
        f"checkpoints/{DEFAULT_REPO_ID.split('/')[-1]}` (the files {', '.join(files)}), then pass that path."
    )


def resolve_checkpoint(path_or_repo: str | Path, files: tuple[str, ...] = LM_FILES) -> Path:
    """Return a local directory (or file) for `path_or_repo`.

    An existing local path is returned as is. A string shaped like `owner/name` that is not a local path
    is treated as a Hugging Face repository id: the listed files are downloaded with huggingface_hub
    (cached as usual) and the snapshot directory is returned. Offline, the error says what to fetch.
    """
    path = Path(path_or_repo).expanduser()
    if path.exists():
        return path
    text = str(path_or_repo)
    if not _looks_like_repo_id(text):
        raise CheckpointError(f"checkpoint not found: {text}. {_download_hint(files)}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=text, allow_patterns=list(files)))
    except Exception as exc:  # network errors, missing repo, offline mode: all mean the same to the user
        raise CheckpointError(
            f"{text!r} is no local path, and no Hugging Face repository of that name could be downloaded "
            f"({exc.__class__.__name__}). {_download_hint(files)}"
        ) from exc


def resolve_codec_checkpoint(path_or_repo: str | Path) -> Path:
    """The codec generator file: a local `.pth`, a local directory holding it, or a repository id."""
    path = resolve_checkpoint(path_or_repo, files=(CODEC_FILE,))
    if path.is_dir():
        path = path / CODEC_FILE
        if not path.exists():
            raise CheckpointError(f"{CODEC_FILE} not found in {path.parent}")
    return path


def read_checkpoint_json(path: Path, what: str) -> object:
    """The JSON in a checkpoint's file `path`; missing or unreadable, a CheckpointError that names `what`."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{what} not found: {path}") from exc
    except (OSError, ValueError) as exc:  # ValueError: bad UTF-8 or bad JSON
        raise CheckpointError(f"{what} {path} is not readable JSON: {exc}") from exc
