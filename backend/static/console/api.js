// The console's only door to the backend: the public API with the operator's key as a Bearer token.
// The key is kept under the same name as the browser phone's, so one entry serves both pages.
const KEY_STORAGE = "relayx.apiKey";

export const getKey = () => localStorage.getItem(KEY_STORAGE) || "";
export const setKey = (key) => localStorage.setItem(KEY_STORAGE, key.trim());
export const forgetKey = () => localStorage.removeItem(KEY_STORAGE);

/** An API answer that was not 2xx: `status` says which (401 wrong key, 404 not there yet, …). */
export class ApiError extends Error {
  constructor(method, path, status, detail) {
    super(`${method} ${path}: ${status} ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    this.status = status;
    this.detail = detail;
  }
}

async function send(method, path, body) {
  const headers = { Authorization: `Bearer ${getKey()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (!response.ok) {
    const data = await response.json().catch(() => null);
    const detail = data && data.detail !== undefined ? data.detail : response.statusText;
    throw new ApiError(method, path, response.status, detail);
  }
  return response;
}

/** The JSON of `method path` (null for a 204). */
export async function api(method, path, body) {
  const response = await send(method, path, body);
  return response.status === 204 ? null : response.json();
}

export const get = (path) => api("GET", path);

/** The JSON of `path`, or `fallback` when it is not there: a 404 (an analysis not made yet), or a 501
 * (campaigns on a database that has none: Supabase's REST API). */
export async function getOr(path, fallback) {
  try {
    return await get(path);
  } catch (error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 501)) return fallback;
    throw error;
  }
}

/** `path` as a Blob URL (an <audio> element cannot send the Bearer header itself); null for a 404. */
export async function blobUrl(path) {
  try {
    const response = await send("GET", path);
    return URL.createObjectURL(await response.blob());
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  }
}

/** `path` with the non-empty entries of `params` as its query string. */
export function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(name, String(value));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}
