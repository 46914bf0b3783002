"""The WebUI in a real headless Chromium (Debian's `chromium`, driven by Playwright) against the gateway and a
real tritonserver: clear errors, a streamed synthesis that plays before generation ends, a downloadable file,
a complete-file synthesis from an uploaded reference that plays in the page's <audio> element, a reference
recorded from the microphone (Chromium's fake one), and a stored voice typed by its id when the gateway cannot
list them.

A screenshot of the page after the streamed synthesis is stored as artifacts/tests/gateway_webui.png.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from gateway_support import running_gateway
from triton_fixtures import STORED_VOICE

from fish_speech_triton.audio import synthetic_speech

sync_api = pytest.importorskip("playwright.sync_api", reason="the dev extra installs playwright")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",  # the microphone is allowed without asking...
    "--use-fake-device-for-media-stream",  # ...and is a generated beep
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "tests"
API_KEY = "webui-key"
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def chromium_path() -> str:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: scripts/test.sh installs it with apt-get")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; scripts/test.sh does it)")
    return CHROMIUM


@pytest.fixture(scope="module")
def gateway(triton_deployment):
    with running_gateway(triton_deployment, api_key=API_KEY) as running:
        yield running


@pytest.fixture(scope="module")
def browser(chromium_path, tmp_path_factory):
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"),  # a fresh --user-data-dir
            executable_path=chromium_path,
            args=CHROMIUM_FLAGS,
            headless=True,
        )
        yield context
        context.close()


@pytest.fixture
def page(browser, gateway):
    page = browser.new_page()
    page.goto(gateway.url + "/")
    yield page
    page.close()


def enter_key_and_sampling(page, max_new_tokens: int) -> None:
    page.fill("#api-key", API_KEY)
    page.dispatch_event("#api-key", "change")  # reloads the stored voices with the key
    page.wait_for_selector(f"#reference-id option[value='{STORED_VOICE}']", state="attached")
    assert page.is_visible("#reference-id") and page.is_hidden("#reference-id-text")
    page.click("summary")  # open the sampling controls
    page.fill("#max-new-tokens", str(max_new_tokens))
    page.fill("#seed", "7")


def test_errors_are_shown_then_a_streamed_synthesis_plays_before_generation_ends(page):
    # Before the key is typed the stored voices cannot be listed: a hint, not an error, and an id can be typed.
    page.wait_for_function("document.querySelector('#voices-hint').textContent !== ''")
    assert "enter the API key" in page.text_content("#voices-hint")
    assert page.is_hidden("#error") and page.is_visible("#reference-id-text")
    # Without the key the server refuses, and the page says why.
    page.click("#generate")
    page.wait_for_function(
        "document.querySelector('#error').textContent.startsWith('missing or wrong API key')"
    )
    # A problem found in the page itself.
    page.check("input[name=voice][value=upload]")
    page.click("#generate")
    page.wait_for_function(
        "document.querySelector('#error').textContent.includes('Choose a reference recording')"
    )

    enter_key_and_sampling(page, max_new_tokens=24)
    page.check("#voice-stored")
    page.select_option("#reference-id", STORED_VOICE)
    assert page.is_checked("#streaming")
    page.click("#generate")
    page.wait_for_function(
        "window.fishPlayback.streamEndedAt !== null && window.fishPlayback.endedChunks >= 1", timeout=WAIT_MS
    )
    played = page.evaluate("({...window.fishPlayback, contextTime: window.fishPlayback.contextTime})")
    assert played["chunks"] >= 2, played  # audio arrived in pieces...
    assert played["firstScheduledAt"] < played["streamEndedAt"], played  # ...and played before the last one
    assert played["contextTime"] > 0 and played["scheduledSeconds"] == pytest.approx(24 * 2048 / 44100)
    assert page.is_hidden("#error")
    assert page.text_content("#status").startswith("Done:")
    assert page.get_attribute("#download", "download") == "audio.wav"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "gateway_webui.png"), full_page=True)


def test_a_complete_file_from_an_uploaded_reference_plays_and_downloads(page, tmp_path):
    reference = tmp_path / "reference.wav"
    sf.write(reference, synthetic_speech(1.0, 22050, seed=3), 22050)
    enter_key_and_sampling(page, max_new_tokens=16)
    page.check("input[name=voice][value=upload]")
    page.set_input_files("#reference-audio", str(reference))
    page.fill("#reference-text", "A reference recording.")
    page.uncheck("#streaming")
    page.select_option("#format", "flac")
    page.click("#generate")
    page.wait_for_function(
        "window.fishPlayback.elementPlaying && document.querySelector('#player').currentTime > 0",
        timeout=WAIT_MS,
    )
    assert page.is_hidden("#error")
    assert page.get_attribute("#download", "download") == "audio.flac"
    flac = page.evaluate(
        """async () => {
            const blob = await (await fetch(document.querySelector('#download').href)).blob();
            return Array.from(new Uint8Array(await blob.arrayBuffer()));
        }"""
    )
    audio, rate = sf.read(io.BytesIO(bytes(flac)))
    assert rate == 44100 and audio.size == 16 * 2048

    page.fill(
        "#max-new-tokens", ""
    )  # an emptied field takes the API's default, it is not sent as 0 (no limit)
    body = page.evaluate("async () => JSON.parse(JSON.stringify(await requestBody(false)))")
    assert "max_new_tokens" not in body and body["seed"] == 7


def test_a_reference_recorded_from_the_microphone_is_a_wav_that_clones(page):
    enter_key_and_sampling(page, max_new_tokens=16)
    page.click("#record")
    page.wait_for_function("document.querySelector('#record').textContent === 'Stop recording'")
    assert page.is_checked("input[name=voice][value=upload]")
    page.wait_for_timeout(1500)
    page.click("#record")
    page.wait_for_function("document.querySelector('#reference-audio').files.length === 1")
    wav = page.evaluate(
        """async () => {
            const file = document.querySelector('#reference-audio').files[0];
            return Array.from(new Uint8Array(await file.arrayBuffer()));
        }"""
    )
    audio, rate = sf.read(io.BytesIO(bytes(wav)), dtype="int16")  # 16-bit PCM wav, what libsndfile reads
    assert audio.ndim == 1 and audio.size >= rate and np.abs(audio).max() > 0
    page.fill("#reference-text", "A recorded reference.")
    page.uncheck("#streaming")
    page.click("#generate")
    page.wait_for_function("window.fishPlayback.elementPlaying", timeout=WAIT_MS)
    assert page.is_hidden("#error")


def test_a_stored_voice_is_typed_by_its_id_when_the_gateway_cannot_list_them(browser, triton_deployment):
    with running_gateway(triton_deployment, references_dir=None) as unaware:  # lists no voices
        page = browser.new_page()
        try:
            page.goto(unaware.url + "/")
            page.wait_for_selector("#reference-id-text", state="visible")
            assert page.is_hidden("#reference-id") and page.is_hidden("#error")
            page.check("#voice-stored")
            page.fill("#reference-id-text", STORED_VOICE)
            page.click("summary")
            page.fill("#max-new-tokens", "16")
            page.uncheck("#streaming")
            body = page.evaluate("async () => await requestBody(false)")
            assert body["reference_id"] == STORED_VOICE
            page.click("#generate")
            page.wait_for_function("window.fishPlayback.elementPlaying", timeout=WAIT_MS)
            assert page.is_hidden("#error")
        finally:
            page.close()
