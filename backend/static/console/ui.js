// Small DOM helpers: every value from the API goes in as text (never as HTML).

/** `<tag attrs>children</tag>`; `on*` attributes are listeners, `dataset` an object, null children skipped. */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (name === "style" && typeof value === "object") Object.assign(element.style, value);
    else if (name in element && typeof value !== "string") element[name] = value;
    else element.setAttribute(name, value === true ? "" : value);
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
}

export const link = (href, text) => h("a", { href }, text);

/** A table of `rows`, one column per [heading, cell(row)]; `empty` shown when there are none. */
export function table(columns, rows, { empty = "Nothing yet", rowAttrs } = {}) {
  if (rows.length === 0) return h("p", { class: "empty" }, empty);
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, columns.map(([heading]) => h("th", {}, heading)))),
    h("tbody", {}, rows.map((row) => h("tr", rowAttrs ? rowAttrs(row) : {}, columns.map(([, cell]) => h("td", {}, cell(row)))))),
  );
}

/** A label with a colour per value (`data-value` styles it). */
export const badge = (value) => (value ? h("span", { class: "badge", dataset: { value } }, value) : "—");

export function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

export function seconds(total) {
  if (total === null || total === undefined) return "—";
  const minutes = Math.floor(total / 60);
  return minutes ? `${minutes} min ${total % 60} s` : `${total} s`;
}

/** A definition list of [term, value] pairs, values that are null or "" left out. */
export function facts(pairs) {
  const shown = pairs.filter(([, value]) => value !== null && value !== undefined && value !== "");
  return h("dl", { class: "facts" }, shown.map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
}

export const section = (title, ...children) => h("section", {}, h("h2", {}, title), ...children);

/** A select of `choices` ([value, label] pairs), with an "any" first entry, set to `current`. */
export function select(name, choices, current, anyLabel = "any") {
  const element = h("select", { name, id: `filter-${name}` }, h("option", { value: "" }, anyLabel));
  for (const [value, label] of choices) element.append(h("option", { value }, label));
  element.value = current || "";
  return element;
}
