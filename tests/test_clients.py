"""The command-line clients against a real tritonserver: round trips, file formats shared with the offline
tools, both protocols of client.tts, stored voices, and one clear error line (exit 2) for every failure."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from triton_fixtures import STORED_VOICE

from client import decode, encode, generate, references, tts
from fish_speech_triton.audio import save_wav, synthetic_speech
from fish_speech_triton.tools import text2semantic, vqgan
from fish_speech_triton.tools.cli import run_cli

SAMPLES_PER_FRAME = 2048
UNREACHABLE = "127.0.0.1:1"
GREEDY = ("--top-p", "0.000001", "--repetition-penalty", "1.3", "--seed", "1")


def cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def in_process(main, *args: str) -> int:
    return run_cli(main, list(args))


def assert_one_error_line(stderr: str, *fragments: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def reference_wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clients") / "ref.wav"
    save_wav(path, synthetic_speech(1.5, 24000, seed=3), 24000)
    return path


@pytest.fixture(scope="module")
def offline_codes(triton_deployment, reference_wav, tmp_path_factory) -> Path:
    """fake.npy and fake.wav as the offline tool writes them for reference_wav."""
    out = tmp_path_factory.mktemp("offline") / "fake.wav"
    ckpt = triton_deployment.checkpoint
    args = ["-i", str(reference_wav), "-o", str(out), "--checkpoint-path", str(ckpt.codec_path)]
    assert vqgan.main([*args, "--config", str(ckpt.codec_config), "--device", "cpu"]) == 0
    return out.with_suffix(".npy")


def offline_decode(triton_deployment, codes: Path, out: Path) -> np.ndarray:
    ckpt = triton_deployment.checkpoint
    args = ["-i", str(codes), "-o", str(out), "--checkpoint-path", str(ckpt.codec_path)]
    assert vqgan.main([*args, "--config", str(ckpt.codec_config), "--device", "cpu"]) == 0
    return sf.read(out, dtype="float32")[0]


# ------------------------------------------------------------------------------------------- round trips


def test_encode_generate_decode_round_trip_through_the_clis(triton_deployment, reference_wav, tmp_path):
    url = ("--url", triton_deployment.grpc_url)
    done = cli("client.encode", "-i", str(reference_wav), "-o", "fake.npy", *url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    prompt = np.load(tmp_path / "fake.npy")
    assert prompt.dtype == np.int32 and prompt.shape == (8, 33)  # 1.5 s -> 129 mel frames -> 33 code frames

    args = (
        "--text",
        "Round trip through Triton.",
        "--prompt-text",
        "The reference.",
        "--prompt-tokens",
        "fake.npy",
    )
    done = cli("client.generate", *args, "--max-new-tokens", "12", *GREEDY, *url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    codes = np.load(tmp_path / "temp" / "codes_0.npy")
    assert codes.dtype == np.int32 and codes.shape == (8, 12)
    assert "wrote temp/codes_0.npy: codes [8, 12]" in done.stdout

    done = cli("client.decode", "-i", "temp/codes_0.npy", "-o", "out.wav", *url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    audio, rate = sf.read(tmp_path / "out.wav", dtype="float32")
    assert rate == 44100 and audio.shape == (12 * SAMPLES_PER_FRAME,)
    assert np.abs(audio).max() > 0


def test_client_encode_writes_the_offline_tools_codes(
    triton_deployment, reference_wav, offline_codes, tmp_path
):
    out = tmp_path / "fake.npy"
    assert (
        in_process(encode.main, "-i", str(reference_wav), "-o", str(out), "--url", triton_deployment.grpc_url)
        == 0
    )
    ours, theirs = np.load(out), np.load(offline_codes)
    assert ours.dtype == theirs.dtype == np.int32 and ours.shape == theirs.shape
    assert (ours == theirs).mean() >= 0.99  # ONNX vs PyTorch rounding may flip a rare code


def test_codes_files_mix_between_the_clients_and_the_offline_tools(
    triton_deployment, reference_wav, offline_codes, tmp_path
):
    url = ("--url", triton_deployment.grpc_url)
    # the offline tool's fake.npy -> client.decode == the offline tool's own reconstruction
    assert in_process(decode.main, "-i", str(offline_codes), "-o", str(tmp_path / "ours.wav"), *url) == 0
    ours = sf.read(tmp_path / "ours.wav", dtype="float32")[0]
    np.testing.assert_allclose(
        ours, sf.read(offline_codes.with_suffix(".wav"), dtype="float32")[0], atol=2e-3
    )
    # client.encode's fake.npy -> the offline decoder == client.decode of the same file
    assert in_process(encode.main, "-i", str(reference_wav), "-o", str(tmp_path / "client.npy"), *url) == 0
    theirs = offline_decode(triton_deployment, tmp_path / "client.npy", tmp_path / "theirs.wav")
    client_wav = tmp_path / "client.wav"
    assert in_process(decode.main, "-i", str(tmp_path / "client.npy"), "-o", str(client_wav), *url) == 0
    assert theirs.shape == ours.shape
    np.testing.assert_allclose(theirs, sf.read(client_wav, dtype="float32")[0], atol=2e-3)
    # the offline tool's fake.npy as client.generate's prompt; its codes_0.npy -> the offline decoder
    args = ("--text", "Hi.", "--prompt-text", "Ref.", "--prompt-tokens", str(offline_codes))
    assert in_process(generate.main, *args, "--max-new-tokens", "8", "--output-dir", str(tmp_path), *url) == 0
    generated = tmp_path / "codes_0.npy"
    offline = offline_decode(triton_deployment, generated, tmp_path / "generated_offline.wav")
    assert in_process(decode.main, "-i", str(generated), "-o", str(tmp_path / "generated.wav"), *url) == 0
    np.testing.assert_allclose(sf.read(tmp_path / "generated.wav", dtype="float32")[0], offline, atol=2e-3)
    # the offline text2semantic's codes_0.npy -> client.decode
    lm_args = ["--text", "Offline.", "--checkpoint-path", str(triton_deployment.checkpoint.lm_dir)]
    lm_args += [
        "--max-new-tokens",
        "6",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--output-dir",
        str(tmp_path / "t2s"),
    ]
    assert text2semantic.main(lm_args) == 0
    assert (
        in_process(
            decode.main, "-i", str(tmp_path / "t2s" / "codes_0.npy"), "-o", str(tmp_path / "t2s.wav"), *url
        )
        == 0
    )
    assert sf.info(tmp_path / "t2s.wav").frames == 6 * SAMPLES_PER_FRAME


def test_generate_with_a_stored_voice(triton_deployment, tmp_path):
    args = ("--text", "As Alice.", "--reference-id", STORED_VOICE, "--max-new-tokens", "5", *GREEDY)
    assert (
        in_process(generate.main, *args, "--output-dir", str(tmp_path), "--url", triton_deployment.grpc_url)
        == 0
    )
    assert np.load(tmp_path / "codes_0.npy").shape == (8, 5)


# ------------------------------------------------------------------------------------------- client.tts


def test_tts_streams_the_same_audio_over_grpc_and_http(triton_deployment, reference_wav, tmp_path):
    common = ("--text", "Both protocols.", "--max-new-tokens", "10", "--streaming", *GREEDY)
    common += ("--reference-audio", str(reference_wav), "--reference-text", "The reference.")
    grpc = cli(
        "client.tts", *common, "--output", "grpc.wav", "--url", triton_deployment.grpc_url, cwd=tmp_path
    )
    http = cli(
        "client.tts", *common, "--output", "http.wav", "--protocol", "http", "--url", triton_deployment.http_url,
        cwd=tmp_path,
    )  # fmt: skip
    for done in (grpc, http):
        assert done.returncode == 0, done.stderr
        assert "[tts] first audio after" in done.stderr
        assert "time to first audio" in done.stdout and "real-time factor" in done.stdout
    a, rate = sf.read(tmp_path / "grpc.wav", dtype="float32")
    b, _ = sf.read(tmp_path / "http.wav", dtype="float32")
    assert rate == 44100 and a.shape == (10 * SAMPLES_PER_FRAME,)
    np.testing.assert_array_equal(a, b)


def test_tts_http_with_a_stored_voice_and_play_without_a_device(triton_deployment, tmp_path, capsys):
    out = tmp_path / "alice.wav"
    # seeded: an unseeded request may sample <|im_end|> early from the small random model and end shorter
    args = ("--text", "Hello.", "--reference-id", STORED_VOICE, "--max-new-tokens", "4", "--seed", "1")
    args += ("--output", str(out), "--protocol", "http", "--url", triton_deployment.http_url, "--play")
    assert in_process(tts.main, *args) == 0
    assert "cannot play audio here" in capsys.readouterr().err  # no sounddevice / audio device on CI
    assert sf.info(out).frames == 4 * SAMPLES_PER_FRAME


# ------------------------------------------------------------------------------------------- stored voices


def test_references_add_list_use_and_remove(triton_deployment, reference_wav, tmp_path, capsys):
    root = ("--references-dir", str(triton_deployment.references_dir))
    folder = triton_deployment.references_dir / "carol"
    try:  # the folder is the session's: carol must not outlive this test, whatever fails
        added = ("add", "carol", "--audio", str(reference_wav), "--text", "Carol.")
        assert in_process(references.main, *root, *added) == 0
        assert (folder / "ref.wav").is_file() and (folder / "ref.lab").read_text().strip() == "Carol."
        assert in_process(references.main, *root, "list") == 0
        assert "ref.wav  not encoded yet" in capsys.readouterr().out

        out = tmp_path / "carol.wav"
        args = ("--text", "As Carol.", "--reference-id", "carol", "--max-new-tokens", "3")
        args += ("--output", str(out))
        assert in_process(tts.main, *args, "--url", triton_deployment.grpc_url) == 0
        assert in_process(references.main, *root, "list") == 0
        listing = capsys.readouterr().out
        assert "carol: 1 sample(s)" in listing and 'ref.wav  codes cached  "Carol."' in listing
        assert f"{STORED_VOICE}: 1 sample(s)" in listing

        assert in_process(references.main, *root, "remove", "carol") == 0
        assert not folder.exists()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_references_errors(reference_wav, tmp_path, capsys):
    root = ("--references-dir", str(tmp_path))
    garbage = tmp_path / "noise.wav"
    garbage.write_bytes(b"not a wav file")
    cases = [
        (("add", "../up", "--audio", str(reference_wav), "--text", "x"), "invalid reference id"),
        (("add", "dan", "--audio", str(tmp_path / "none.wav"), "--text", "x"), "audio file not found"),
        (("add", "dan", "--audio", str(garbage), "--text", "x"), "cannot read audio file"),
        (("add", "dan", "--audio", str(tmp_path / "codes.npy"), "--text", "x"), "not a supported audio file"),
        (("add", "dan", "--audio", str(reference_wav), "--text", "  "), "--text is empty"),
        (("remove", "nobody"), "unknown reference id 'nobody'"),
    ]
    for args, message in cases:
        assert in_process(references.main, *root, *args) == 2
        assert_one_error_line(capsys.readouterr().err, message)
    assert in_process(references.main, *root, "add", "dan", "--audio", str(reference_wav), "--text", "x") == 0
    assert in_process(references.main, *root, "add", "dan", "--audio", str(reference_wav), "--text", "y") == 2
    assert_one_error_line(capsys.readouterr().err, "already has a sample named 'ref'")


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "command",
    [
        ("client.tts", "--text", "hi"),
        ("client.tts", "--text", "hi", "--protocol", "http"),
        ("client.encode", "-i", "REF"),
        ("client.generate", "--text", "hi"),
        ("client.decode", "-i", "CODES"),
    ],
    ids=["tts-grpc", "tts-http", "encode", "generate", "decode"],
)
def test_unreachable_server_is_one_clear_line_and_exit_2(command, reference_wav, offline_codes, tmp_path):
    args = [{"REF": str(reference_wav), "CODES": str(offline_codes)}.get(a, a) for a in command[1:]]
    done = cli(command[0], *args, "--url", UNREACHABLE, cwd=tmp_path)
    assert done.returncode == 2
    assert_one_error_line(done.stderr, f"no Triton server reachable at {UNREACHABLE}")


def test_bad_files_and_arguments_are_one_clear_line_and_exit_2(
    triton_deployment, reference_wav, tmp_path, capsys
):
    url = ("--url", triton_deployment.grpc_url)
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"no numpy here")
    shapes = tmp_path / "shape.npy"
    np.save(shapes, np.zeros((3, 5), np.int32))
    floats = tmp_path / "floats.npy"
    np.save(floats, np.zeros((8, 5), np.float32))
    big = tmp_path / "big.npy"
    np.save(big, np.full((8, 5), 2000, np.int32))
    noise = tmp_path / "noise.wav"
    noise.write_bytes(b"RIFF....")
    cases = [
        (encode.main, ("-i", str(tmp_path / "missing.wav")), "audio file not found"),
        (encode.main, ("-i", str(noise)), "cannot read audio file"),
        (encode.main, ("-i", str(reference_wav), "-o", str(tmp_path / "codes.txt")), "codes go to a .npy file"),
        (encode.main, ("-i", str(reference_wav), "-o", str(noise / "codes.npy")), f"--output {noise}/codes.npy: cannot write in {noise}"),
        (generate.main, ("--text", "hi", "--output-dir", str(noise)), f"--output-dir {noise}/codes_0.npy: cannot write in {noise}"),
        (decode.main, ("-i", str(tmp_path / "missing.npy")), "codes file not found"),
        (decode.main, ("-i", str(garbage)), "is not a .npy array"),
        (decode.main, ("-i", str(shapes)), "must have shape [8, frames>0], got [3, 5]"),
        (decode.main, ("-i", str(floats)), "must be integers"),
        (decode.main, ("-i", str(big)), "must be in [0, 1024)"),
        (decode.main, ("-i", str(shapes), "-o", str(tmp_path / "x.mp3")), "must be a .wav file"),
        (generate.main, ("--text", "hi", "--prompt-text", "a"), "go in pairs"),
        (
            generate.main,
            ("--text", "hi", "--prompt-text", "a", "--prompt-tokens", str(big), "--prompt-text", "b", "--prompt-tokens", str(big)),
            "one reference per request",
        ),
        (generate.main, ("--text", "hi", "--prompt-text", "a", "--prompt-tokens", str(big)), "must be in [0, 1024)"),
        (generate.main, ("--text", "hi", "--reference-id", "nobody"), "unknown reference id 'nobody'"),
        (generate.main, ("--text", "hi", "--top-p", "0"), "top_p must be in (0, 1]"),
        (generate.main, ("--text", "  "), "--text is empty"),
        (tts.main, ("--text", "hi", "--reference-text", "no audio"), "--reference-text needs --reference-audio"),
        (tts.main, ("--text", "hi", "--temperature", "3", "--protocol", "http", "--url", triton_deployment.http_url), "temperature"),
    ]  # fmt: skip
    for main, args, message in cases:
        url_args = () if "--url" in args else url
        assert in_process(main, *args, *url_args) == 2, (main.__module__, args)
        assert_one_error_line(capsys.readouterr().err, message)
