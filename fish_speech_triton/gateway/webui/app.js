"use strict";
// The WebUI: POST /v1/tts as JSON. Streaming answers are a 44-byte wav header, then int16 PCM at 44.1 kHz;
// each piece is scheduled on an AudioContext as it arrives, so playback starts before generation ends.

const SAMPLE_RATE = 44100;
const WAV_HEADER_BYTES = 44;
const $ = (id) => document.getElementById(id);

let context = null; // one AudioContext, made on the first click (browsers allow sound after a gesture)
let controller = null; // aborts the request in flight
let sources = []; // scheduled buffers, stopped by Stop
let recording = null; // the microphone while a reference is being recorded

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

// A list to pick the stored voice from; without one (the gateway was started without --references-dir, or
// the API key is not typed yet) the voice's id is typed, as in the original WebUI.
async function loadVoices() {
  let ids = [];
  let hint = "";
  try {
    const response = await fetch("/v1/references/list", { headers: authHeaders() });
    if (response.ok) ids = (await response.json()).reference_ids;
    else if (response.status === 401 && !$("api-key").value.trim()) hint = "(enter the API key to list them)";
    else throw new Error(await errorMessage(response));
  } catch (error) {
    showError(`Cannot list the stored voices: ${error.message}`);
  }
  $("reference-id").replaceChildren(...ids.map((id) => new Option(id, id)));
  $("reference-id").hidden = !ids.length;
  $("reference-id-text").hidden = Boolean(ids.length);
  $("voices-hint").textContent = hint;
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
    const id = ($("reference-id").hidden ? $("reference-id-text") : $("reference-id")).value.trim();
    if (!id) throw new Error("Type the id of a stored voice, or pick another voice.");
    body.reference_id = id;
  } else if (voice === "upload") {
    const file = $("reference-audio").files[0];
    const text = $("reference-text").value.trim();
    if (!file) throw new Error("Choose a reference recording, or pick another voice.");
    if (!text) throw new Error("Type what the reference recording says.");
    body.references = [{ audio: await base64(file), text }];
  }
  return body;
}

function wavBlob(parts, sampleRate = SAMPLE_RATE) {
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
  header.setUint32(24, sampleRate, true);
  header.setUint32(28, 2 * sampleRate, true);
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

// Recording the reference: the microphone's samples are kept as they arrive and written as a 16-bit wav, which
// becomes the chosen file (MediaRecorder writes webm, which the server's audio decoder does not read).
async function startRecording() {
  if (!navigator.mediaDevices) throw new Error("the microphone needs a secure page: open the WebUI over https or on localhost");
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const microphone = new AudioContext();
  const processor = microphone.createScriptProcessor(4096, 1, 1);
  const chunks = [];
  processor.onaudioprocess = (event) => chunks.push(new Float32Array(event.inputBuffer.getChannelData(0)));
  microphone.createMediaStreamSource(stream).connect(processor);
  processor.connect(microphone.destination); // it only runs while connected; its output is silence
  recording = { microphone, stream, chunks };
  document.querySelector('input[name="voice"][value="upload"]').checked = true;
  $("record").textContent = "Stop recording";
  setStatus("Recording… speak, then press Stop recording.");
}

async function stopRecording() {
  const { microphone, stream, chunks } = recording;
  recording = null;
  stream.getTracks().forEach((track) => track.stop());
  await microphone.close();
  const samples = chunks.reduce((total, chunk) => total + chunk.length, 0);
  const pcm = new DataView(new ArrayBuffer(2 * samples));
  let offset = 0;
  for (const chunk of chunks) {
    for (const sample of chunk) {
      pcm.setInt16(offset, Math.max(-32768, Math.min(32767, Math.round(sample * 32768))), true);
      offset += 2;
    }
  }
  const files = new DataTransfer();
  files.items.add(new File([wavBlob([pcm], microphone.sampleRate)], "recording.wav", { type: "audio/wav" }));
  $("reference-audio").files = files.files;
  $("record").textContent = "Record";
  setStatus(`Recorded ${(samples / microphone.sampleRate).toFixed(1)} s: type what it says.`);
}

async function toggleRecording() {
  showError("");
  try {
    await (recording ? stopRecording() : startRecording());
  } catch (error) {
    recording = null;
    $("record").textContent = "Record";
    showError(`Cannot record: ${error.message}`);
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
$("record").addEventListener("click", toggleRecording);
$("player").addEventListener("playing", () => (playback.elementPlaying = true));
showRangeValues();
loadVoices();
