// The browser phone: pick an agent and call it from the microphone, or dial one of the configured
// phone numbers (an inbound call, answered by that number's agent).
//
// The page is the phone line: it speaks Twilio's Media Streams protocol to the gateway exactly as
// Twilio (and backend/telephony/virtual_phone.py) do — `connected`, `start` with the call id, then
// 20 ms μ-law `media` frames without pause; it plays the agent's `media`, echoes each `mark` once the
// audio before it has played, drops queued audio on `clear`, and sends `stop` on hang-up.
import { Resampler, decodeUlaw } from "./audio.js";

const KEY_STORAGE = "relayx.apiKey";
const PHONE_RATE = 8000;
const FRAME_MS = 20;
// Playback (re)starts this far ahead of the clock: the gateway sends ~60 ms ahead of real time,
// so this absorbs network and main-thread jitter without an audible delay.
const JITTER_S = 0.06;
const POLL_MS = 1000;
const POLL_AFTER_END_MS = 5000; // the gateway flushes the last lines when the socket closes
const NUMBER_PREFIX = "tel:"; // a choice that dials a number; any other is an agent id

const $ = (id) => document.getElementById(id);
const ui = {
  key: $("key"), agent: $("agent"), call: $("call"), hangup: $("hangup"), level: $("level"),
  status: $("status"), callId: $("call-id"), transcript: $("transcript"),
};
let current = null; // the live call, or null

// --- REST -------------------------------------------------------------------------------------------

const apiKey = () => ui.key.value.trim();

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${apiKey()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const detail = data && data.detail !== undefined ? data.detail : response.statusText;
    throw new Error(`${method} ${path}: ${response.status} ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return data;
}

async function loadAgents(preferred) {
  ui.agent.disabled = true;
  ui.call.disabled = true;
  if (!apiKey()) {
    setStatus("Enter the API key to list agents");
    return;
  }
  setStatus("Loading agents…");
  let agents;
  try {
    agents = await api("GET", "/agents");
  } catch (error) {
    setStatus(error.message, "error");
    return;
  }
  if (agents.length === 0) {
    ui.agent.replaceChildren(new Option("No agents yet: create one with POST /agents", ""));
    setStatus("No agents yet");
    return;
  }
  const agentOptions = agents.map((agent) => new Option(agent.name, agent.id));
  const numbers = await loadNumbers();
  if (numbers.length === 0) {
    ui.agent.replaceChildren(...agentOptions);
  } else {
    const names = new Map(agents.map((agent) => [agent.id, agent.name]));
    const numberOptions = numbers.map((number) => {
      const label = `${number.number} → ${names.get(number.agent_id) || "its agent"}`;
      const option = new Option(number.inbound_enabled ? label : `${label} (inbound off)`, NUMBER_PREFIX + number.number);
      option.disabled = !number.inbound_enabled;
      return option;
    });
    ui.agent.replaceChildren(group("Call an agent", agentOptions), group("Dial a number (inbound)", numberOptions));
  }
  if (preferred && agents.some((agent) => agent.id === preferred)) ui.agent.value = preferred;
  ui.agent.disabled = false;
  ui.call.disabled = current !== null;
  setStatus(`Ready: ${agents.length} agent${agents.length === 1 ? "" : "s"}`);
}

/** The configured phone numbers; none when they cannot be listed (the agents still can be called). */
async function loadNumbers() {
  try {
    return await api("GET", "/phone-numbers?limit=500");
  } catch {
    return [];
  }
}

function group(label, options) {
  const element = document.createElement("optgroup");
  element.label = label;
  element.append(...options);
  return element;
}

async function pollTranscript(call) {
  try {
    renderTranscript(await api("GET", `/calls/${call.id}/transcripts`));
  } catch (error) {
    console.warn("transcript poll failed:", error.message);
  }
}

function renderTranscript(lines) {
  ui.transcript.replaceChildren(...lines.map((line) => {
    const item = document.createElement("li");
    item.dataset.speaker = line.speaker;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = line.speaker === "agent" ? "Agent" : "You";
    item.append(who, line.text); // text nodes only: a transcript is never parsed as HTML
    return item;
  }));
}

// --- playback ---------------------------------------------------------------------------------------

/** The agent's audio: 8 kHz μ-law in, scheduled back to back on the AudioContext's clock. */
class Player {
  constructor(context, echoMark) {
    this.context = context;
    this.echoMark = echoMark;
    this.output = context.createGain();
    this.output.connect(context.destination);
    this.upsampler = new Resampler(PHONE_RATE, context.sampleRate);
    this.sources = new Set();
    this.marks = []; // [{ name, at }] in the order received; `at` = when the audio before it ends
    this.endFrame = 0; // context frame where the audio queued so far ends (an integer: no seams)
    this.timer = setInterval(() => this._echoPlayedMarks(), FRAME_MS);
  }

  get speaking() {
    return this.endFrame / this.context.sampleRate > this.context.currentTime;
  }

  play(samples) {
    const audio = this.upsampler.push(samples);
    if (audio.length === 0) return;
    const rate = this.context.sampleRate;
    const now = this.context.currentTime;
    if (this.endFrame / rate < now + 0.005) this.endFrame = Math.ceil((now + JITTER_S) * rate); // ran dry
    const buffer = this.context.createBuffer(1, audio.length, rate);
    buffer.copyToChannel(audio, 0);
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.output);
    source.onended = () => this.sources.delete(source);
    source.start(this.endFrame / rate);
    this.sources.add(source);
    this.endFrame += audio.length;
  }

  mark(name) {
    this.marks.push({ name, at: this.endFrame / this.context.sampleRate });
    this._echoPlayedMarks();
  }

  /** Barge-in: silence now, and return every pending mark (as Twilio does). */
  clear() {
    for (const source of this.sources) source.stop();
    this.sources.clear();
    this.endFrame = 0;
    this.upsampler = new Resampler(PHONE_RATE, this.context.sampleRate);
    const pending = this.marks;
    this.marks = [];
    for (const { name } of pending) this.echoMark(name);
  }

  close() {
    clearInterval(this.timer);
    for (const source of this.sources) source.stop();
    this.sources.clear();
    this.marks = [];
  }

  _echoPlayedMarks() {
    const heard = this.context.currentTime - (this.context.outputLatency || 0);
    while (this.marks.length > 0 && this.marks[0].at <= heard) this.echoMark(this.marks.shift().name);
  }
}

// --- the call ---------------------------------------------------------------------------------------

function randomSid(prefix) {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

const toBase64 = (bytes) => btoa(String.fromCharCode(...bytes));
const fromBase64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));

function send(call, message) {
  if (!call.socket || call.socket.readyState !== WebSocket.OPEN) return;
  call.sequence += 1;
  const framed = message.event === "connected" ? message : { sequenceNumber: String(call.sequence), ...message };
  call.socket.send(JSON.stringify(framed));
}

function openSocket(url) {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url);
    socket.onopen = () => resolve(socket);
    socket.onerror = () => reject(new Error(`cannot reach the voice gateway at ${url}`));
    socket.onclose = (event) => reject(new Error(`the voice gateway closed the stream: ${event.reason || event.code}`));
  });
}

async function startCall() {
  const choice = ui.agent.value;
  if (!choice || current) return;
  const call = {
    id: null, socket: null, sequence: 0, chunk: 0, started: false, ended: false,
    streamSid: randomSid("MZ"), callSid: randomSid("CA"), accountSid: "AC" + "0".repeat(32),
  };
  current = call;
  ui.call.disabled = true;
  ui.hangup.disabled = false;
  ui.agent.disabled = true;
  ui.transcript.replaceChildren();
  try {
    setStatus("Starting the microphone…");
    // Created in the click handler, so browsers let it play without another gesture.
    call.context = new AudioContext({ latencyHint: "interactive" });
    await call.context.resume();
    call.stream = await navigator.mediaDevices.getUserMedia({
      // Echo cancellation keeps the agent's voice out of the microphone (else it barges into itself);
      // no automatic gain, so the level the turn detector hears is the level spoken.
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: false, channelCount: 1 },
    });
    await call.context.audioWorklet.addModule("/phone/static/capture-worklet.js");
    if (call.ended) return release(call); // hung up meanwhile: free what this step created
    setStatus("Placing the call…");
    const target = choice.startsWith(NUMBER_PREFIX) ? { to_number: choice.slice(NUMBER_PREFIX.length) } : { agent_id: choice };
    const placed = await api("POST", "/phone/calls", target);
    call.id = placed.call_id;
    ui.callId.textContent = `Call ${call.id}`;
    document.body.dataset.callId = call.id;
    if (call.ended) {
      cancelUnstarted(call); // hung up while the row was being written
      return release(call);
    }
    setStatus("Connecting to the voice gateway…");
    call.socket = await openSocket(placed.stream_url);
    if (call.ended) return release(call);
  } catch (error) {
    if (call.ended) return release(call);
    endCall(call, error.name === "NotAllowedError" ? "Microphone permission denied" : error.message, "error");
    return;
  }
  streamCall(call);
}

function streamCall(call) {
  const { socket, context } = call;
  socket.onerror = null;
  socket.onclose = (event) => {
    const normal = event.code === 1000 || event.code === 1005;
    endCall(call, normal ? "Call ended" : `Call ended by the gateway: ${event.reason || event.code}`,
      normal ? "idle" : "error");
  };
  socket.onmessage = (event) => onGatewayMessage(call, JSON.parse(event.data));
  send(call, { event: "connected", protocol: "Call", version: "1.0.0" });
  send(call, {
    event: "start",
    streamSid: call.streamSid,
    start: {
      accountSid: call.accountSid, callSid: call.callSid, streamSid: call.streamSid, tracks: ["inbound"],
      customParameters: { call_id: call.id },
      mediaFormat: { encoding: "audio/x-mulaw", sampleRate: PHONE_RATE, channels: 1 },
    },
  });
  call.started = true;
  call.player = new Player(context, (name) => send(call, { event: "mark", streamSid: call.streamSid, mark: { name } }));
  // No outputs: the worklet is a sink, so the microphone is never played back to the speaker.
  call.capture = new AudioWorkletNode(context, "relayx-capture", {
    numberOfInputs: 1, numberOfOutputs: 0, channelCount: 1, channelCountMode: "explicit",
  });
  call.capture.port.onmessage = ({ data }) => {
    ui.level.value = data.level;
    call.chunk += 1;
    send(call, {
      event: "media",
      streamSid: call.streamSid,
      media: { track: "inbound", chunk: String(call.chunk), timestamp: String(call.chunk * FRAME_MS),
        payload: toBase64(data.ulaw) },
    });
    setStatus(call.player.speaking ? "Connected: the agent is speaking" : "Connected: listening", "live");
  };
  call.source = context.createMediaStreamSource(call.stream);
  call.source.connect(call.capture);
  call.poller = setInterval(() => pollTranscript(call), POLL_MS);
  setStatus("Connected: listening", "live");
}

function onGatewayMessage(call, message) {
  if (message.event === "media") call.player.play(decodeUlaw(fromBase64(message.media.payload)));
  else if (message.event === "mark") call.player.mark(message.mark.name);
  else if (message.event === "clear") call.player.clear();
}

function hangUp() {
  const call = current;
  if (!call) return;
  send(call, { event: "stop", streamSid: call.streamSid, stop: { accountSid: call.accountSid, callSid: call.callSid } });
  endCall(call, "Call ended");
}

/** A stream that never started leaves the gateway nothing to close: the row is canceled here. */
function cancelUnstarted(call) {
  if (call.id === null || call.started) return;
  api("POST", `/phone/calls/${call.id}/end`).catch((error) => console.warn(error.message));
}

function endCall(call, text, state = "idle") {
  if (call.ended) return;
  call.ended = true;
  release(call);
  cancelUnstarted(call);
  if (call.id) {
    pollTranscript(call);
    const poller = setInterval(() => pollTranscript(call), POLL_MS);
    setTimeout(() => clearInterval(poller), POLL_AFTER_END_MS);
  }
  if (current === call) current = null;
  ui.level.value = 0;
  ui.hangup.disabled = true;
  ui.agent.disabled = false;
  ui.call.disabled = !ui.agent.value;
  setStatus(text, state);
}

/** Free whatever the call holds now (idempotent: a setup step still in flight calls it again). */
function release(call) {
  clearInterval(call.poller);
  if (call.source) call.source.disconnect();
  if (call.capture) call.capture.port.onmessage = null;
  if (call.stream) call.stream.getTracks().forEach((track) => track.stop());
  if (call.player) call.player.close();
  if (call.context && call.context.state !== "closed") call.context.close();
  if (call.socket && call.socket.readyState <= WebSocket.OPEN) call.socket.close(1000, "hang up");
}

function setStatus(text, state = "idle") {
  if (ui.status.textContent === text && ui.status.dataset.state === state) return;
  ui.status.textContent = text;
  ui.status.dataset.state = state;
}

// --- start ------------------------------------------------------------------------------------------

// `#key=…&agent=…` fills the form (links, tests); the fragment never reaches a server log, and is
// removed from the address bar at once.
const fragment = new URLSearchParams(location.hash.slice(1));
if (location.hash) history.replaceState(null, "", location.pathname + location.search);
if (fragment.get("key")) localStorage.setItem(KEY_STORAGE, fragment.get("key"));
ui.key.value = localStorage.getItem(KEY_STORAGE) || "";
ui.key.addEventListener("change", () => {
  localStorage.setItem(KEY_STORAGE, apiKey());
  loadAgents();
});
ui.call.addEventListener("click", startCall);
ui.hangup.addEventListener("click", hangUp);
loadAgents(fragment.get("agent"));
