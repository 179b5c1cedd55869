// The operator console: hash routes (#/calls, #/calls/<id>, #/campaigns, #/campaigns/<id>, #/agents,
// #/agents/<id>, #/agents/new), each a view that renders into <main> from the public API.
//
// A view gets a Context: `every(ms, fn)` polls (a live campaign, a call in progress) and `onLeave(fn)`
// cleans up (a recording's Blob URL); both end when the route changes, so no timer outlives its page.
import { ApiError, forgetKey, getKey, setKey } from "./api.js";
import { agentPage, agentsPage } from "./agents.js";
import { callPage, callsPage } from "./calls.js";
import { campaignPage, campaignsPage } from "./campaigns.js";
import { h } from "./ui.js";

const ROUTES = [
  [/^\/calls$/, callsPage],
  [/^\/calls\/([^/]+)$/, callPage],
  [/^\/campaigns$/, campaignsPage],
  [/^\/campaigns\/([^/]+)$/, campaignPage],
  [/^\/agents$/, agentsPage],
  [/^\/agents\/([^/]+)$/, agentPage],
];

const $ = (id) => document.getElementById(id);

class Context {
  constructor() {
    this.left = false;
    this._cleanups = [];
  }

  /** Run `fn` every `ms` until the page is left or `fn` returns false; failures are shown, not thrown. */
  every(ms, fn) {
    let timer;
    const tick = async () => {
      if (this.left) return;
      let again = true;
      try {
        again = (await fn()) !== false;
      } catch (error) {
        showError(error);
      }
      if (again && !this.left) timer = setTimeout(tick, ms);
    };
    timer = setTimeout(tick, ms);
    this.onLeave(() => clearTimeout(timer));
  }

  onLeave(fn) {
    this._cleanups.push(fn);
  }

  leave() {
    this.left = true;
    for (const fn of this._cleanups.splice(0)) fn();
  }
}

let current = null;

export function showError(error) {
  const box = $("error");
  if (!error) {
    box.hidden = true;
    return;
  }
  console.error(error);
  box.textContent = error instanceof ApiError && error.status === 401 ? "The API key was refused: enter it again." : error.message;
  box.hidden = false;
  if (error instanceof ApiError && error.status === 401) askForKey();
}

function askForKey() {
  $("key-form").hidden = false;
  $("view").replaceChildren();
  $("key").focus();
}

/** `#/path?query` → the view, its path parameters and its query. */
function parse(hash) {
  const [path, query = ""] = hash.replace(/^#/, "").split("?");
  for (const [pattern, view] of ROUTES) {
    const match = pattern.exec(path || "/calls");
    if (match) return { view, params: match.slice(1).map(decodeURIComponent), query: new URLSearchParams(query) };
  }
  return null;
}

async function render() {
  if (current) current.leave();
  const context = (current = new Context());
  showError(null);
  if (!getKey()) {
    askForKey();
    return;
  }
  $("key-form").hidden = true;
  const route = parse(location.hash);
  const view = $("view");
  const section = (location.hash.split("/")[1] || "calls").split("?")[0];
  for (const a of document.querySelectorAll("nav a[data-section]")) a.classList.toggle("active", a.dataset.section === section);
  if (!route) {
    view.replaceChildren(h("p", {}, "No such page. ", h("a", { href: "#/calls" }, "See the calls.")));
    return;
  }
  view.replaceChildren(h("p", { class: "loading" }, "Loading…"));
  document.body.dataset.ready = "false";
  try {
    const element = await route.view(context, ...route.params, route.query);
    if (!context.left) view.replaceChildren(element);
  } catch (error) {
    if (!context.left) {
      view.replaceChildren();
      showError(error);
    }
  } finally {
    if (!context.left) document.body.dataset.ready = "true"; // tests and screenshots wait for this
  }
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setKey($("key").value);
  $("key").value = "";
  render();
});
$("forget-key").addEventListener("click", () => {
  forgetKey();
  render();
});
window.addEventListener("hashchange", render);
if (!location.hash) history.replaceState(null, "", "#/calls");
render();
