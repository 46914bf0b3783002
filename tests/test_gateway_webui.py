"""The WebUI in a real headless Chromium (Debian's `chromium`, driven by Playwright) against the gateway and a
real tritonserver: clear errors, a streamed synthesis that plays before generation ends, a downloadable file,
and a complete-file synthesis from an uploaded reference that plays in the page's <audio> element.

A screenshot of the page after the streamed synthesis is stored as artifacts/tests/gateway_webui.png.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

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
    page.click("summary")  # open the sampling controls
    page.fill("#max-new-tokens", str(max_new_tokens))
    page.fill("#seed", "7")


def test_errors_are_shown_then_a_streamed_synthesis_plays_before_generation_ends(page):
    # Without the key the server refuses, and the page says why.
    page.wait_for_selector("#error:not([hidden])")
    assert "missing or wrong API key" in page.text_content("#error")
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
