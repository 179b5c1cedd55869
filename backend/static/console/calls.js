// Calls: the list with its filters, and one call's page (facts, recording, per-turn latency,
// transcript, analysis, webhook deliveries).
import { api, blobUrl, get, getOr, withQuery } from "./api.js";
import { badge, facts, h, link, section, seconds, select, table, when } from "./ui.js";

const PAGE_SIZE = 50;
const POLL_MS = 2000;
const STATUSES = ["queued", "initiated", "ringing", "in-progress", "busy", "canceled", "completed", "failed", "no-answer"];
const TERMINAL = new Set(["busy", "canceled", "completed", "failed", "no-answer"]);
const SENTIMENTS = ["positive", "neutral", "negative"];
const FILTERS = ["status", "outcome", "sentiment", "agent_id", "campaign_id"];
// What stands between the caller's last word and the agent's first sound, as the gateway measures
// it per reply (voice_gateway/reply.py, session.py). Stacked in order; with speculation (a reply
// started at a pause) the stages can overlap, so voice-to-voice is shown beside the bar as measured.
export const STAGES = [
  ["end_of_turn_ms", "End of turn"],
  ["stt_ms", "STT"],
  ["llm_first_token_ms", "LLM first token"],
  ["tts_first_audio_ms", "TTS first audio"],
];
const FLAGS = ["interrupted", "backchannel", "screening", "voicemail", "reprompt", "repeat", "refusal", "llm_error"];

// --- the list ---------------------------------------------------------------------------------------

export async function callsPage(context, query) {
  const filters = Object.fromEntries(FILTERS.map((name) => [name, query.get(name) || ""]));
  const offset = Math.max(0, Number(query.get("offset")) || 0);
  const [agents, campaigns, page] = await Promise.all([
    get("/agents?limit=500"),
    getOr("/campaigns", null), // null: a backend without campaigns
    get(withQuery("/calls", { ...filters, limit: PAGE_SIZE, offset })),
  ]);
  const agentNames = new Map(agents.map((agent) => [agent.id, agent.name]));
  const campaignNames = new Map((campaigns || []).map((campaign) => [campaign.id, campaign.name]));
  const go = (changes) => {
    location.hash = withQuery("#/calls", { ...filters, offset: 0, ...changes }).replace(/[?&]offset=0(?=&|$)/, "");
  };

  const outcomes = new Set(agents.flatMap((agent) => Object.keys(agent.settings?.analysis?.outcomes || {})));
  const outcome = h("input", { name: "outcome", id: "filter-outcome", list: "outcomes", placeholder: "any", value: filters.outcome });
  const form = h(
    "form",
    { class: "filters", id: "call-filters", onsubmit: (event) => event.preventDefault() },
    h("label", {}, "Status ", select("status", STATUSES.map((s) => [s, s]), filters.status)),
    h("label", {}, "Outcome ", outcome, h("datalist", { id: "outcomes" }, [...outcomes].map((o) => h("option", { value: o })))),
    h("label", {}, "Sentiment ", select("sentiment", SENTIMENTS.map((s) => [s, s]), filters.sentiment)),
    h("label", {}, "Agent ", select("agent_id", agents.map((a) => [a.id, a.name]), filters.agent_id)),
    campaigns && h("label", {}, "Campaign ", select("campaign_id", campaigns.map((c) => [c.id, c.name]), filters.campaign_id)),
    Object.values(filters).some(Boolean) && h("a", { href: "#/calls" }, "Clear filters"),
  );
  form.addEventListener("change", (event) => go({ [event.target.name]: event.target.value }));

  const rows = table(
    [
      ["Created", (call) => link(`#/calls/${call.id}`, when(call.created_at))],
      ["Agent", (call) => agentNames.get(call.agent_id) || call.agent_id.slice(0, 8)],
      ["Direction", (call) => call.direction],
      ["Number", (call) => (call.direction === "inbound" ? call.from_number : call.to_number) || "—"],
      ["Status", (call) => badge(call.status)],
      ["Duration", (call) => seconds(call.duration)],
      ...(campaigns ? [["Campaign", (call) => (call.campaign_id ? link(`#/campaigns/${call.campaign_id}`, campaignNames.get(call.campaign_id) || "campaign") : "—")]] : []),
    ],
    page.data,
    { empty: "No calls match.", rowAttrs: (call) => ({ dataset: { callId: call.id } }) },
  );
  const pager = h(
    "p",
    { class: "pager" },
    offset > 0 && h("button", { type: "button", onclick: () => go({ offset: Math.max(0, offset - PAGE_SIZE) }) }, "← Newer"),
    page.data.length ? ` ${offset + 1}–${offset + page.data.length} ` : "",
    page.has_more && h("button", { type: "button", onclick: () => go({ offset: offset + PAGE_SIZE }) }, "Older →"),
  );
  return h("div", { id: "calls" }, h("h1", {}, "Calls"), form, rows, pager);
}

// --- one call ---------------------------------------------------------------------------------------

export async function callPage(context, id) {
  const page = h("div", { id: "call" });
  const agents = new Map();
  let recording = null; // fetched once the call has ended (the gateway writes it then)
  let player = null; // made once: a refresh (analysis still running) must not restart what is playing
  context.onLeave(() => recording && URL.revokeObjectURL(recording));

  const refresh = async () => {
    const path = `/calls/${encodeURIComponent(id)}`;
    const [call, lines, analysis, hooks] = await Promise.all([
      get(path),
      get(`${path}/transcripts`),
      getOr(`${path}/analysis`, null),
      get(`${path}/webhooks`),
    ]);
    if (!agents.has(call.agent_id)) agents.set(call.agent_id, await getOr(`/agents/${call.agent_id}`, null));
    const ended = TERMINAL.has(call.status);
    if (ended && recording === null) recording = (await blobUrl(`${path}/recording`)) || "";
    if (context.left) return false;
    if (player === null || (ended && recording !== null && !player.dataset.ended)) player = recordingPlayer(recording, ended);
    page.replaceChildren(
      h("h1", {}, "Call ", h("code", {}, call.id.slice(0, 8)), " ", badge(call.status)),
      callFacts(call, agents.get(call.agent_id)),
      section("Recording", player),
      section("Latency per turn", latencyChart(lines)),
      section("Transcript", transcript(call, lines)),
      section("Analysis", analysisView(call, analysis, refresh)),
      section("Webhooks", webhooksView(hooks)),
    );
    // Live until it ends, and a little after: its analysis and webhooks come once it has ended.
    return !ended || analysis === null || analysis.status === "queued" || analysis.status === "running";
  };
  if (await refresh()) context.every(POLL_MS, refresh);
  return page;
}

function callFacts(call, agent) {
  return facts([
    ["Agent", agent ? link(`#/agents/${agent.id}`, agent.name) : call.agent_id],
    ["Direction", call.direction],
    ["To", call.to_number],
    ["From", call.from_number],
    ["Campaign", call.campaign_id ? link(`#/campaigns/${call.campaign_id}`, call.campaign_id.slice(0, 8)) : null],
    ["Created", when(call.created_at)],
    ["Started", call.started_at && when(call.started_at)],
    ["Ended", call.ended_at && when(call.ended_at)],
    ["Duration", call.duration !== null ? seconds(call.duration) : null],
    ["Answered by", call.answered_by],
    ["Transferred to", call.transferred_to],
    ["Error", call.error],
    ["Call SID", call.twilio_call_sid],
  ]);
}

function recordingPlayer(url, ended) {
  if (!ended) return h("p", { class: "empty" }, "The recording is ready when the call ends.");
  if (!url) return h("p", { class: "empty", dataset: { ended: "true" } }, "No recording (not kept, or deleted).");
  return h(
    "div",
    { class: "recording", dataset: { ended: "true" } },
    h("audio", { id: "recording", controls: true, preload: "auto", src: url }),
    h("a", { href: url, download: "recording.wav" }, "Download WAV"),
    h("small", {}, "Two channels: the caller on the left, the agent on the right."),
  );
}

/** One stacked bar per agent reply that has stage timings, on a common scale. */
export function latencyChart(lines) {
  const turns = lines
    .filter((line) => line.speaker === "agent" && STAGES.some(([key]) => typeof line.metrics[key] === "number"))
    .map((line, index) => ({ line, index: index + 1, metrics: line.metrics }));
  if (turns.length === 0) return h("p", { class: "empty" }, "No measured replies.");
  const total = (m) => STAGES.reduce((sum, [key]) => sum + (m[key] || 0), 0);
  const scale = Math.max(...turns.map(({ metrics }) => Math.max(total(metrics), metrics.voice_to_voice_ms || 0)), 1);
  const legend = h(
    "p",
    { class: "legend" },
    STAGES.map(([key, label]) => h("span", {}, h("i", { class: "swatch", dataset: { stage: key } }), label)),
    h("span", {}, h("i", { class: "swatch v2v" }), "voice to voice (as heard)"),
  );
  const rows = turns.map(({ line, index, metrics }) =>
    h(
      "div",
      { class: "turn", dataset: { turn: index }, title: line.text },
      h("span", { class: "turn-label" }, `Turn ${index}`),
      h(
        "div",
        { class: "bar" },
        STAGES.filter(([key]) => metrics[key] > 0).map(([key, label]) =>
          h(
            "span",
            { class: "segment", dataset: { stage: key, ms: metrics[key] }, title: `${label}: ${metrics[key]} ms`, style: { width: `${(100 * metrics[key]) / scale}%` } },
            metrics[key] / scale > 0.08 ? `${metrics[key]}` : "",
          ),
        ),
        metrics.voice_to_voice_ms > 0 && h("span", { class: "v2v-mark", title: `voice to voice: ${metrics.voice_to_voice_ms} ms`, style: { left: `${(100 * metrics.voice_to_voice_ms) / scale}%` } }),
      ),
      h("span", { class: "turn-total" }, metrics.voice_to_voice_ms !== undefined ? `${metrics.voice_to_voice_ms} ms` : `${total(metrics)} ms`),
    ),
  );
  return h("div", { class: "latency", id: "latency" }, legend, rows, h("small", {}, `Scale: 0 – ${scale} ms. Stages overlap when a reply is started at a pause.`));
}

function transcript(call, lines) {
  if (lines.length === 0) return h("p", { class: "empty" }, "No lines yet.");
  const start = Date.parse(call.started_at || call.created_at);
  let turn = 0;
  return h(
    "ol",
    { class: "transcript", id: "transcript" },
    lines.map((line) => {
      const measured = line.speaker === "agent" && STAGES.some(([key]) => typeof line.metrics[key] === "number");
      if (measured) turn += 1;
      const offset = Math.max(0, Math.round((Date.parse(line.timestamp) - start) / 1000));
      const flags = FLAGS.filter((flag) => line.metrics[flag]);
      return h(
        "li",
        { dataset: { speaker: line.speaker } },
        h("span", { class: "at" }, `${Math.floor(offset / 60)}:${String(offset % 60).padStart(2, "0")}`),
        h("span", { class: "who" }, line.speaker),
        h("span", { class: "text" }, line.text),
        h(
          "small",
          { class: "meta" },
          flags.map((flag) => h("span", { class: "flag" }, `${flag.replace("_", " ")} `)),
          line.metrics.tool && `tool: ${line.metrics.tool} `,
          measured && `turn ${turn}`,
        ),
      );
    }),
  );
}

function analysisView(call, analysis, refresh) {
  const rerun = h("button", {
    type: "button",
    onclick: async (event) => {
      event.target.disabled = true;
      await api("POST", `/calls/${call.id}/analysis`);
      await refresh();
    },
  }, analysis ? "Run again" : "Analyse");
  if (!analysis) {
    return h("div", { id: "analysis" }, h("p", { class: "empty" }, TERMINAL.has(call.status) ? "No analysis yet." : "Made when the call ends."), TERMINAL.has(call.status) && rerun);
  }
  const data = Object.keys(analysis.data || {}).length ? h("pre", {}, JSON.stringify(analysis.data, null, 2)) : null;
  return h(
    "div",
    { id: "analysis" },
    facts([
      ["Status", badge(analysis.status)],
      ["Outcome", analysis.outcome && link(withQuery("#/calls", { outcome: analysis.outcome }), analysis.outcome)],
      ["Sentiment", analysis.sentiment && badge(analysis.sentiment)],
      ["Summary", analysis.summary],
      ["Error", analysis.error],
      ["Model", analysis.model && `${analysis.model}${analysis.condensed ? " (transcript condensed)" : ""}`],
    ]),
    analysis.key_points.length > 0 && h("ul", { class: "key-points" }, analysis.key_points.map((point) => h("li", {}, point))),
    data,
    rerun,
  );
}

function webhooksView(events) {
  return table(
    [
      ["Event", (event) => event.type],
      ["URL", (event) => h("code", {}, event.url)],
      ["Status", (event) => badge(event.status)],
      ["Attempts", (event) =>
        h("ol", { class: "attempts" }, event.attempt_log.map((attempt) =>
          h("li", {}, `${attempt.status_code ?? attempt.error ?? "—"}`, attempt.duration_ms !== null ? ` in ${attempt.duration_ms} ms` : "", h("small", {}, ` ${when(attempt.created_at)}`)),
        )),
      ],
      ["Delivered", (event) => when(event.delivered_at)],
    ],
    events,
    { empty: "No events (the agent has no webhook URL)." },
  );
}
