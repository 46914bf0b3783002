"""Manage the stored reference voices the server reads: `references/<id>/<name>.wav` + `<name>.lab`.

python -m client.references add alice --audio alice.wav --text "what alice.wav says"
python -m client.references list
python -m client.references remove alice

It works on the folder itself (`--references-dir`, the server's `references_dir`), so run it where that
folder is (the server's host or a shared volume). `llama_semantic` encodes a new sample on first use and
caches its codes next to it (`<name>.wav.codes.npz`, e.g. `alice.wav.codes.npz`); `list` shows which samples
are cached.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from fish_speech_triton.audio import load_audio
from fish_speech_triton.errors import InputError
from fish_speech_triton.serving.references import (
    AUDIO_SUFFIXES,
    audio_files,
    cached_codes,
    read_transcript,
    validate_reference_id,
    voice_ids,
)
from fish_speech_triton.tools.cli import run_cli

DEFAULT_DIR = Path("build") / "references"  # the builder's default: beside build/model_repository


def voice_folder(root: Path, reference_id: str, *, exists: bool) -> Path:
    folder = root / validate_reference_id(reference_id)
    if exists and not folder.is_dir():
        known = ", ".join(voice_ids(root)) or "none"
        raise InputError(f"unknown reference id {reference_id!r} in {root} (stored: {known})")
    return folder


def add(root: Path, reference_id: str, audio: Path, text: str) -> Path:
    if audio.suffix.lower() not in AUDIO_SUFFIXES:
        raise InputError(f"{audio} is not a supported audio file (use {', '.join(AUDIO_SUFFIXES)})")
    if not text.strip():
        raise InputError("--text is empty: give the transcript of the audio")
    load_audio(audio)  # refuses a missing, unreadable or empty file with its reason
    folder = voice_folder(root, reference_id, exists=False)
    target = folder / audio.name
    if any(p.stem == audio.stem for p in (audio_files(folder) if folder.is_dir() else [])):
        raise InputError(
            f"reference {reference_id!r} already has a sample named {audio.stem!r}; remove it first"
        )
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(audio, target)
    target.with_suffix(".lab").write_text(text.strip() + "\n", encoding="utf-8")
    return target


def describe(root: Path) -> list[str]:
    lines = []
    for reference_id in voice_ids(root):
        samples = audio_files(root / reference_id)
        lines.append(f"{reference_id}: {len(samples)} sample(s)")
        for audio in samples:
            lab = audio.with_suffix(".lab")
            transcript = read_transcript(lab) if lab.is_file() else None
            status = "codes cached" if cached_codes(audio) is not None else "not encoded yet"
            text = f'"{transcript}"' if transcript is not None else "NO .lab TRANSCRIPT (the server skips it)"
            lines.append(f"  {audio.name}  {status}  {text}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.references", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--references-dir",
        type=Path,
        default=DEFAULT_DIR,
        help=f"the folder the server reads, its --references-dir (default {DEFAULT_DIR}, serve's default)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_parser = commands.add_parser("add", help="store a sample of a voice (audio + transcript)")
    add_parser.add_argument("id", help="the voice's id, used as REFERENCE_ID / --reference-id")
    add_parser.add_argument("--audio", type=Path, required=True, help="a recording of the voice")
    add_parser.add_argument("--text", required=True, help="what the recording says")
    commands.add_parser("list", help="stored voices, their samples and whether their codes are cached")
    remove_parser = commands.add_parser("remove", help="delete a voice and all its samples")
    remove_parser.add_argument("id")
    args = parser.parse_args(argv)
    root: Path = args.references_dir

    if args.command == "add":
        target = add(root, args.id, args.audio, args.text)
        print(f"added {target} with its transcript {target.with_suffix('.lab').name}")
    elif args.command == "list":
        lines = describe(root)
        print("\n".join(lines) if lines else f"no stored voices in {root}")
    else:
        folder = voice_folder(root, args.id, exists=True)
        if folder.is_symlink():  # a voice linked in from elsewhere: remove the link, not what it points to
            folder.unlink()
        else:
            shutil.rmtree(folder)
        print(f"removed {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
