// Campaigns: the list, and one campaign's page with live progress (polled while it runs), its
// contacts and the verbs that move it (start, pause, resume, cancel).
import { api, get, getOr, withQuery } from "./api.js";
import { badge, facts, h, link, section, select, table, when } from "./ui.js";

const POLL_MS = 2000;
const CONTACTS_PAGE = 50;
// progress keys in the order a contact moves through them; `total` and `calls_placed` stand apart
export const COUNTS = ["pending", "calling", "completed", "failed", "skipped", "cancelled"];
const CONTACT_STATUSES = COUNTS;
const BAR_ORDER = ["completed", "failed", "skipped", "cancelled", "calling", "pending"]; // settled first
// Which verbs each campaign status allows (the API refuses the others with a 409).
const VERBS = {
  start: ["draft"],
  pause: ["running"],
  resume: ["paused"],
  cancel: ["draft", "running", "paused"],
};
const LIVE = new Set(["running"]);

const done = (progress) => progress.completed + progress.failed + progress.skipped + progress.cancelled;

export async function campaignsPage() {
  const campaigns = await getOr("/campaigns", null);
  if (campaigns === null) return h("div", {}, h("h1", {}, "Campaigns"), h("p", { class: "empty" }, "Campaigns need SQLite or PostgreSQL (DATABASE_URL)."));
  const agents = new Map((await get("/agents?limit=500")).map((agent) => [agent.id, agent.name]));
  return h(
    "div",
    { id: "campaigns" },
    h("h1", {}, "Campaigns"),
    table(
      [
        ["Name", (c) => link(`#/campaigns/${c.id}`, c.name)],
        ["Status", (c) => badge(c.status)],
        ["Progress", (c) => (c.progress ? h("span", {}, progressBar(c.progress, true), ` ${done(c.progress)} / ${c.progress.total}`) : "—")],
        ["Agent", (c) => agents.get(c.agent_id) || c.agent_id.slice(0, 8)],
        ["Created", (c) => when(c.created_at)],
      ],
      campaigns,
      { empty: "No campaigns yet: create one with POST /campaigns.", rowAttrs: (c) => ({ dataset: { campaignId: c.id } }) },
    ),
  );
}

export async function campaignPage(context, id, query) {
  const path = `/campaigns/${encodeURIComponent(id)}`;
  const contactStatus = query.get("contacts") || "";
  const offset = Math.max(0, Number(query.get("offset")) || 0);
  const page = h("div", { id: "campaign" });
  let agent = null;
  let polling = false;

  const refresh = async () => {
    const [campaign, contacts] = await Promise.all([
      get(path),
      get(withQuery(`${path}/contacts`, { status: contactStatus, limit: CONTACTS_PAGE, offset })),
    ]);
    if (agent === null || agent.id !== campaign.agent_id) agent = await getOr(`/agents/${campaign.agent_id}`, { id: campaign.agent_id, name: campaign.agent_id });
    if (context.left) return false;
    page.dataset.status = campaign.status;
    page.replaceChildren(
      h("h1", {}, campaign.name, " ", badge(campaign.status)),
      verbs(campaign, act),
      section("Progress", progressView(campaign)),
      section("Settings", settingsView(campaign, agent)),
      section("Contacts", contactsView(id, contacts, contactStatus, offset)),
    );
    return LIVE.has(campaign.status);
  };

  const act = async (verb) => {
    await api("POST", `${path}/${verb}`);
    if ((await refresh()) && !polling) poll();
  };
  const poll = () => {
    polling = true;
    context.every(POLL_MS, async () => (polling = await refresh()));
  };
  if (await refresh()) poll();
  return page;
}

function verbs(campaign, act) {
  return h(
    "p",
    { class: "verbs" },
    Object.entries(VERBS).map(([verb, from]) =>
      h("button", {
        type: "button",
        id: `campaign-${verb}`,
        class: verb === "cancel" ? "danger" : "",
        disabled: !from.includes(campaign.status),
        onclick: async (event) => {
          event.target.disabled = true;
          if (verb === "cancel" && !confirm(`Cancel "${campaign.name}"? Pending contacts will not be called.`)) {
            event.target.disabled = false;
            return;
          }
          await act(verb);
        },
      }, verb[0].toUpperCase() + verb.slice(1)),
    ),
  );
}

function progressBar(progress, small = false) {
  const total = Math.max(progress.total, 1);
  return h(
    "span",
    { class: small ? "progress small" : "progress" },
    BAR_ORDER.filter((key) => progress[key] > 0).map((key) =>
      h("span", { class: "segment", dataset: { stage: key }, title: `${key}: ${progress[key]}`, style: { width: `${(100 * progress[key]) / total}%` } }),
    ),
  );
}

function progressView(campaign) {
  const progress = campaign.progress;
  return h(
    "div",
    { id: "progress" },
    progressBar(progress),
    h(
      "dl",
      { class: "counts" },
      [["total", "Contacts"], ...COUNTS.map((key) => [key, key[0].toUpperCase() + key.slice(1)]), ["calls_placed", "Calls placed"]].map(([key, label]) =>
        h("div", { dataset: { stage: key } }, h("dt", {}, label), h("dd", { class: "count", dataset: { key } }, String(progress[key]))),
      ),
    ),
    h("p", {}, link(withQuery("#/calls", { campaign_id: campaign.id }), "This campaign's calls →")),
  );
}

function settingsView(campaign, agent) {
  const hours = campaign.window ? `${campaign.window.days.join(", ")} · ${campaign.window.start.slice(0, 5)}–${campaign.window.end.slice(0, 5)}` : "any time";
  const rules = campaign.retry;
  const retry = !rules ? null : rules.max_attempts <= 1 ? "none (one attempt per contact)"
    : `up to ${rules.max_attempts} attempts, ${rules.delay_s} s apart, after ${rules.on.join(", ")}`;
  return facts([
    ["Agent", link(`#/agents/${agent.id}`, agent.name)],
    ["From", campaign.from_number],
    ["Concurrency", `${campaign.max_concurrency} calls at once, ${campaign.calls_per_second} new per second`],
    ["Calling window", `${hours} (${campaign.timezone})`],
    ["Retries", retry],
    ["Created", when(campaign.created_at)],
    ["Started", campaign.started_at && when(campaign.started_at)],
    ["Completed", campaign.completed_at && when(campaign.completed_at)],
  ]);
}

function contactsView(id, contacts, status, offset) {
  const go = (changes) => {
    location.hash = withQuery(`#/campaigns/${id}`, { contacts: status, offset, ...changes }).replace(/[?&]offset=0(?=&|$)/, "");
  };
  const filter = select("contacts", CONTACT_STATUSES.map((s) => [s, s]), status, "every status");
  filter.addEventListener("change", () => go({ contacts: filter.value, offset: 0 }));
  return h(
    "div",
    { id: "contacts" },
    h("p", { class: "filters" }, h("label", {}, "Status ", filter)),
    table(
      [
        ["Row", (c) => c.row_number ?? "—"],
        ["Number", (c) => c.phone_number],
        ["Status", (c) => badge(c.status)],
        ["Attempts", (c) => String(c.attempts)],
        ["Last outcome", (c) => c.last_outcome || "—"],
        ["Last call", (c) => (c.last_call_id ? link(`#/calls/${c.last_call_id}`, c.last_call_id.slice(0, 8)) : "—")],
        ["Next attempt", (c) => (c.status === "pending" ? when(c.next_attempt_at) : "—")],
        ["Variables", (c) => (Object.keys(c.variables || {}).length ? h("code", {}, JSON.stringify(c.variables)) : "—")],
      ],
      contacts.data,
      { empty: "No contacts with this status." },
    ),
    h(
      "p",
      { class: "pager" },
      offset > 0 && h("button", { type: "button", onclick: () => go({ offset: Math.max(0, offset - CONTACTS_PAGE) }) }, "← Previous"),
      contacts.data.length ? ` ${offset + 1}–${offset + contacts.data.length} ` : "",
      contacts.has_more && h("button", { type: "button", onclick: () => go({ offset: offset + CONTACTS_PAGE }) }, "Next →"),
    ),
  );
}
