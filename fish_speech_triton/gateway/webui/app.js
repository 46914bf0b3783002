"use strict";
// The WebUI: POST /v1/tts as JSON. Streaming answers are a 44-byte wav header, then int16 PCM at 44.1 kHz;
// each piece is scheduled on an AudioContext as it arrives, so playback starts before generation ends.

const SAMPLE_RATE = 44100;
const WAV_HEADER_BYTES = 44;
const $ = (id) => document.getElementById(id);

let context = null; // one AudioContext, made on the first click (browsers allow sound after a gesture)
let controller = null; // aborts the request in flight
let sources = []; // scheduled buffers, stopped by Stop

// What has been played, for the status line and for the browser test (window.fishPlayback).
const playback = {
  chunks: 0,
  scheduledSeconds: 0,
  endedChunks: 0,
  firstScheduledAt: null,
  streamEndedAt: null,
  elementPlaying: false,
  get contextTime() {
    return context ? context.currentTime : 0;
  },
  reset() {
    Object.assign(this, { chunks: 0, scheduledSeconds: 0, endedChunks: 0, firstScheduledAt: null, streamEndedAt: null });
    this.elementPlaying = false;
  },
};
window.fishPlayback = playback;

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setStatus(text) {
  $("status").textContent = text;
}

function seconds(since) {
  return ((performance.now() - since) / 1000).toFixed(2);
}

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function errorMessage(response) {
  const text = await response.text();
  try {
    const data = JSON.parse(text);
    return data.message || (data.error && data.error.message) || text;
  } catch {
    return text || `${response.status} ${response.statusText}`;
  }
}

async function loadVoices() {
  const select = $("reference-id");
  let ids = [];
  try {
    const response = await fetch("/v1/references/list", { headers: authHeaders() });
    if (!response.ok) throw new Error(await errorMessage(response));
    ids = (await response.json()).reference_ids;
  } catch (error) {
    showError(`Cannot list the stored voices: ${error.message}`);
  }
  select.replaceChildren(...(ids.length ? ids.map((id) => new Option(id, id)) : [new Option("none stored", "")]));
  select.disabled = !ids.length;
  $("voice-stored").disabled = !ids.length;
}

function base64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(",") + 1));
    reader.onerror = () => reject(new Error(`Cannot read ${file.name}.`));
    reader.readAsDataURL(file);
  });
}

async function requestBody(streaming) {
  // an emptied field is left out (the API's default applies), never sent as 0
  const number = (id) => ($(id).value.trim() === "" ? undefined : Number($(id).value));
  const body = {
    text: $("text").value,
    streaming,
    format: streaming ? "wav" : $("format").value,
    max_new_tokens: number("max-new-tokens"),
    top_p: number("top-p"),
    temperature: number("temperature"),
    repetition_penalty: number("repetition-penalty"),
    chunk_length: number("chunk-length"),
  };
  if (!body.text.trim()) throw new Error("Type the text to speak.");
  if ($("seed").value !== "") body.seed = number("seed");
  const voice = document.querySelector('input[name="voice"]:checked').value;
  if (voice === "stored") {
    if (!$("reference-id").value) throw new Error("No stored voice is selected.");
    body.reference_id = $("reference-id").value;
  } else if (voice === "upload") {
    const file = $("reference-audio").files[0];
    const text = $("reference-text").value.trim();
    if (!file) throw new Error("Choose a reference recording, or pick another voice.");
    if (!text) throw new Error("Type what the reference recording says.");
    body.references = [{ audio: await base64(file), text }];
  }
  return body;
}

function wavBlob(parts) {
  const dataBytes = parts.reduce((total, part) => total + part.byteLength, 0);
  const header = new DataView(new ArrayBuffer(WAV_HEADER_BYTES));
  const ascii = (offset, text) => [...text].forEach((c, i) => header.setUint8(offset + i, c.charCodeAt(0)));
  ascii(0, "RIFF");
  header.setUint32(4, 36 + dataBytes, true);
  ascii(8, "WAVE");
  ascii(12, "fmt ");
  header.setUint32(16, 16, true);
  header.setUint16(20, 1, true); // PCM
  header.setUint16(22, 1, true); // mono
  header.setUint32(24, SAMPLE_RATE, true);
  header.setUint32(28, 2 * SAMPLE_RATE, true);
  header.setUint16(32, 2, true);
  header.setUint16(34, 16, true);
  ascii(36, "data");
  header.setUint32(40, dataBytes, true);
  return new Blob([header, ...parts], { type: "audio/wav" });
}

// Turns the streamed bytes into AudioBuffers played back to back; keeps the PCM for the download.
class StreamPlayer {
  constructor() {
    this.headerLeft = WAV_HEADER_BYTES;
    this.carry = new Uint8Array(0); // an odd byte waiting for its pair
    this.nextStart = 0;
    this.pcm = [];
  }

  push(bytes) {
    const skip = Math.min(this.headerLeft, bytes.length);
    this.headerLeft -= skip;
    const joined = new Uint8Array(this.carry.length + bytes.length - skip);
    joined.set(this.carry);
    joined.set(bytes.subarray(skip), this.carry.length);
    const even = joined.length - (joined.length % 2);
    this.carry = joined.slice(even);
    if (even) this.schedule(joined.slice(0, even));
  }

  schedule(pcm) {
    this.pcm.push(pcm);
    const view = new DataView(pcm.buffer);
    const buffer = context.createBuffer(1, pcm.length / 2, SAMPLE_RATE);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < channel.length; i++) channel[i] = view.getInt16(2 * i, true) / 32768;
    const source = context.createBufferSource();
    source.buffer = buffer;
    source.connect(context.destination);
    source.onended = () => (playback.endedChunks += 1);
    const start = Math.max(this.nextStart, context.currentTime + 0.05);
    source.start(start);
    this.nextStart = start + buffer.duration;
    sources.push(source);
    playback.chunks += 1;
    playback.scheduledSeconds += buffer.duration;
    if (playback.firstScheduledAt === null) playback.firstScheduledAt = performance.now();
  }
}

async function playStream(response, started) {
  const player = new StreamPlayer();
  const reader = response.body.getReader();
  for (;;) {
    let part;
    try {
      part = await reader.read();
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new Error("The audio stream broke off before the end: generation failed on the server (see its log).");
    }
    if (part.done) break;
    player.push(part.value);
    setStatus(`Playing while generating: ${playback.scheduledSeconds.toFixed(2)} s of audio after ${seconds(started)} s`);
  }
  playback.streamEndedAt = performance.now();
  return wavBlob(player.pcm);
}

function stopPlayback() {
  sources.forEach((source) => source.stop());
  sources = [];
  $("player").pause();
}

function showResult(blob, format, started, streaming) {
  const player = $("player");
  if (player.src) URL.revokeObjectURL(player.src);
  const url = URL.createObjectURL(blob);
  player.src = url;
  const link = $("download");
  link.href = url;
  link.download = `audio.${format}`;
  link.textContent = `Download audio.${format}`;
  link.hidden = false;
  if (streaming) {
    setStatus(`Done: ${playback.scheduledSeconds.toFixed(2)} s of audio, generated in ${seconds(started)} s.`);
  } else {
    setStatus(`Done in ${seconds(started)} s.`);
    player.play().catch(() => setStatus(`Done in ${seconds(started)} s: press play to listen.`));
  }
}

function setBusy(busy) {
  $("generate").disabled = busy;
  $("stop").disabled = !busy;
}

async function generate(event) {
  event.preventDefault();
  showError("");
  const streaming = $("streaming").checked;
  let body;
  try {
    body = await requestBody(streaming);
  } catch (error) {
    showError(error.message);
    return;
  }
  context = context || new AudioContext({ sampleRate: SAMPLE_RATE });
  await context.resume();
  stopPlayback();
  playback.reset();
  controller = new AbortController();
  setBusy(true);
  const started = performance.now();
  setStatus("Generating…");
  try {
    const response = await fetch("/v1/tts", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    const blob = streaming ? await playStream(response, started) : await response.blob();
    showResult(blob, body.format, started, streaming);
  } catch (error) {
    setStatus(error.name === "AbortError" ? "Stopped." : "");
    if (error.name !== "AbortError") showError(error.message || String(error));
  } finally {
    controller = null;
    setBusy(false);
  }
}

function showRangeValues() {
  document.querySelectorAll("output[for]").forEach((output) => {
    const input = $(output.htmlFor.value);
    const update = () => (output.textContent = input.value);
    input.addEventListener("input", update);
    update();
  });
}

$("tts-form").addEventListener("submit", generate);
$("stop").addEventListener("click", () => {
  if (controller) controller.abort();
  stopPlayback();
});
$("streaming").addEventListener("change", () => ($("format").disabled = $("streaming").checked));
$("format").disabled = $("streaming").checked;
$("api-key").addEventListener("change", () => {
  showError("");
  loadVoices();
});
$("player").addEventListener("playing", () => (playback.elementPlaying = true));
showRangeValues();
loadVoices();
