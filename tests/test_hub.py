"""Finding checkpoints: local paths as they are, `owner/name` through huggingface_hub, clear errors otherwise."""

from __future__ import annotations

import huggingface_hub
import pytest

from fish_speech_triton.errors import CheckpointError
from fish_speech_triton.hub import CODEC_FILE, LM_FILES, resolve_checkpoint, resolve_codec_checkpoint

HINT = "hf download fishaudio/fish-speech-1.5 --local-dir checkpoints/fish-speech-1.5"


@pytest.fixture
def downloads(monkeypatch, tmp_path):
    """Record snapshot_download calls; each answers a folder holding the files it was asked for."""
    calls = []

    def snapshot_download(repo_id, allow_patterns):
        calls.append((repo_id, allow_patterns))
        if repo_id == "nobody/nothing":
            raise huggingface_hub.errors.RepositoryNotFoundError("404")
        folder = tmp_path / "hub" / repo_id
        folder.mkdir(parents=True, exist_ok=True)
        for name in allow_patterns:
            (folder / name).write_bytes(b"x")
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_a_local_path_is_used_as_it_is(tmp_path, downloads):
    assert resolve_checkpoint(tmp_path) == tmp_path
    (tmp_path / CODEC_FILE).write_bytes(b"x")
    assert resolve_codec_checkpoint(tmp_path) == tmp_path / CODEC_FILE
    assert not downloads


def test_a_repository_id_is_downloaded(downloads):
    folder = resolve_checkpoint("fishaudio/fish-speech-1.5")
    assert downloads == [("fishaudio/fish-speech-1.5", list(LM_FILES))]
    assert sorted(p.name for p in folder.iterdir()) == sorted(LM_FILES)
    assert resolve_codec_checkpoint("fishaudio/fish-speech-1.5").name == CODEC_FILE


def test_a_missing_local_path_is_not_taken_for_a_repository(tmp_path, monkeypatch, downloads):
    monkeypatch.chdir(tmp_path)
    (
        tmp_path / "checkpoints"
    ).mkdir()  # a local folder: checkpoints/fish-speech-1.5 is a path, not owner/name
    with pytest.raises(CheckpointError, match=f"checkpoint not found: checkpoints/fish-speech-1.5. .*{HINT}"):
        resolve_checkpoint("checkpoints/fish-speech-1.5")
    with pytest.raises(CheckpointError, match=f"checkpoint not found: ./ckpt. .*{HINT}"):
        resolve_checkpoint("./ckpt")
    assert not downloads


def test_a_repository_that_cannot_be_downloaded_says_what_to_fetch(downloads):
    with pytest.raises(CheckpointError, match=f"no Hugging Face repository of that name .*{HINT}"):
        resolve_checkpoint("nobody/nothing")


def test_a_folder_without_the_codec_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=f"{CODEC_FILE} not found in {tmp_path}"):
        resolve_codec_checkpoint(tmp_path)
