// Talking to the admin's JSON API: the base path, the CSRF token and errors.

// The dashboard lives at {path}/dashboard, so "." is {path}/ and the API is at {path}.
export const ROOT = new URL(".", document.baseURI).pathname.replace(/\/$/, "");

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

let csrfToken = "";
let onUnauthorized = () => {};

export function configure({ token, unauthorized }) {
  if (token !== undefined) csrfToken = token;
  if (unauthorized !== undefined) onUnauthorized = unauthorized;
}

export function url(path, params) {
  const query = params ? new URLSearchParams(params).toString() : "";
  return ROOT + path + (query ? `?${query}` : "");
}

function describe(body, status) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail) && detail.length) {
    return detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  }
  return `HTTP ${status}`;
}

/** fetch a JSON API path; throws ApiError with the server's explanation. */
export async function api(path, { method = "GET", body, params } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = csrfToken;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url(path, params), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch (e) {
    data = null;
  }
  if (!response.ok) {
    if (response.status === 401) onUnauthorized();
    throw new ApiError(response.status, describe(data, response.status));
  }
  return data;
}

/** Query parameters for the list/rows/export endpoints from a filter object. */
export function filterParams(filter) {
  const params = new URLSearchParams();
  for (const key of ["q", "status", "func_name", "queue", "since"]) {
    if (filter[key]) params.set(key, filter[key]);
  }
  return params;
}
