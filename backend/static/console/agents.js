// Agents: the list, and one agent's form (name, prompt, greeting, voice), saved with PATCH; #/agents/new
// creates one with POST. Settings, tools and the LLM stay with the API (PATCH /agents/<id>).
import { api, get, withQuery } from "./api.js";
import { facts, h, link, table, when } from "./ui.js";

export async function agentsPage() {
  const agents = await get("/agents?limit=500");
  return h(
    "div",
    { id: "agents" },
    h("h1", {}, "Agents ", h("a", { href: "#/agents/new", class: "button" }, "New agent")),
    table(
      [
        ["Name", (agent) => link(`#/agents/${agent.id}`, agent.name)],
        ["Greeting", (agent) => agent.greeting || "—"],
        ["Voice", (agent) => agent.voice || "default"],
        ["Calls", (agent) => link(withQuery("#/calls", { agent_id: agent.id }), "calls")],
        ["Try it", (agent) => h("a", { href: `/phone#agent=${encodeURIComponent(agent.id)}`, target: "_blank", rel: "noopener" }, "browser phone ↗")],
        ["Updated", (agent) => when(agent.updated_at)],
      ],
      agents,
      { empty: "No agents yet.", rowAttrs: (agent) => ({ dataset: { agentId: agent.id } }) },
    ),
  );
}

export async function agentPage(context, id) {
  const creating = id === "new";
  const agent = creating ? { name: "", prompt: "", greeting: "", voice: "" } : await get(`/agents/${encodeURIComponent(id)}`);
  const field = (name, label, input, hint) =>
    h("label", { class: "field" }, h("span", {}, label), input, hint && h("small", {}, hint));
  const inputs = {
    name: h("input", { name: "name", required: true, maxlength: "200", value: agent.name }),
    prompt: h("textarea", { name: "prompt", required: true, rows: "10" }),
    greeting: h("textarea", { name: "greeting", rows: "2", maxlength: "1000" }),
    voice: h("input", { name: "voice", maxlength: "200", value: agent.voice || "" }),
  };
  inputs.prompt.value = agent.prompt;
  inputs.greeting.value = agent.greeting || "";
  const status = h("span", { class: "saved", role: "status" });

  const save = async (event) => {
    event.preventDefault();
    const values = {
      name: inputs.name.value.trim(),
      prompt: inputs.prompt.value,
      greeting: inputs.greeting.value.trim() || null, // empty: no greeting, the agent waits for the caller
      voice: inputs.voice.value.trim() || null, // empty: the TTS model's default speaker
    };
    status.textContent = "Saving…";
    if (creating) {
      const made = await api("POST", "/agents", values);
      location.hash = `#/agents/${made.id}`;
      return;
    }
    const changes = Object.fromEntries(Object.entries(values).filter(([key, value]) => value !== (agent[key] ?? null)));
    if (Object.keys(changes).length === 0) {
      status.textContent = "No changes";
      return;
    }
    Object.assign(agent, await api("PATCH", `/agents/${agent.id}`, changes));
    status.textContent = `Saved ${new Date().toLocaleTimeString()}`;
  };
  const form = h(
    "form",
    { id: "agent-form", class: "agent-form", onsubmit: (event) => save(event).catch((error) => { status.textContent = error.message; }) },
    field("name", "Name", inputs.name),
    field("prompt", "Prompt", inputs.prompt, "What the agent is and does; the system prompt of every reply."),
    field("greeting", "Greeting", inputs.greeting, "Spoken as soon as the call connects; empty: none."),
    field("voice", "Voice", inputs.voice, "A speaker of the TTS model; empty: its default speaker."),
    h("p", {}, h("button", { type: "submit" }, creating ? "Create" : "Save"), " ", status),
  );
  return h(
    "div",
    { id: "agent" },
    h("h1", {}, creating ? "New agent" : agent.name),
    !creating && facts([
      ["Id", h("code", {}, agent.id)],
      ["Language", agent.language],
      ["Model", `${agent.llm.model || "the engine's default"} · temperature ${agent.llm.temperature}`],
      ["Calls", link(withQuery("#/calls", { agent_id: agent.id }), "this agent's calls")],
      ["Try it", h("a", { href: `/phone#agent=${encodeURIComponent(agent.id)}`, target: "_blank", rel: "noopener" }, "in the browser phone ↗")],
      ["Created", when(agent.created_at)],
      ["Updated", when(agent.updated_at)],
    ]),
    form,
  );
}
