// Building the page from data. Everything from the server goes in as text (text nodes,
// textContent, attribute values), never as HTML; the page's Trusted Types policy would
// refuse an HTML string anyway.

const STATUSES = new Set([
  "pending",
  "running",
  "success",
  "failed",
  "interrupted",
  "cancelled",
  "rejected",
]);
const LEVELS = new Set(["debug", "info", "warning", "error", "critical"]);

/**
 * h("td", {class: "num", title: "..."}, "text", childNode, ...)
 * Attribute names are fixed by the caller; values and children may be any data.
 */
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) throw new Error("event handlers are added with addEventListener");
    if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else if (child instanceof Node) node.appendChild(child);
    else node.appendChild(document.createTextNode(String(child)));
  }
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

export function statusBadge(status) {
  const known = STATUSES.has(status) ? status : "pending";
  return h("span", { class: `badge status-${known}` }, status);
}

export function levelBadge(level) {
  const known = LEVELS.has(level) ? level : "debug";
  return h("span", { class: `level level-${known}` }, level);
}

const pad = (n, width = 2) => String(n).padStart(width, "0");

/** Local time as "2024-05-01 13:45:07" (sorts and reads the same everywhere). */
export function fmtDate(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return (
    `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
  );
}

/** Local time of day with milliseconds: "13:45:07.123". */
export function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

export function fmtCount(value) {
  return value === null || value === undefined ? "–" : value.toLocaleString();
}

export function fmtPercent(rate) {
  return rate === null || rate === undefined ? "–" : `${(rate * 100).toFixed(1)}%`;
}

/** A function name shown as "module." (muted) + "name" (bold). */
export function funcName(name) {
  const cut = name.lastIndexOf(".");
  if (cut <= 0) return h("span", { class: "func", title: name }, name);
  return h(
    "span",
    { class: "func", title: name },
    h("span", { class: "module" }, name.slice(0, cut + 1)),
    name.slice(cut + 1),
  );
}

/** A local datetime-local input value as an ISO timestamp (UTC), or "". */
export function localInputToIso(value) {
  if (!value) return "";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? "" : date.toISOString();
}

/** An ISO timestamp as a datetime-local input value in local time. */
export function isoToLocalInput(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  return (
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}` +
    `T${pad(date.getHours())}:${pad(date.getMinutes())}`
  );
}

export function toast(message, { error = false } = {}) {
  const box = document.getElementById("toasts");
  const item = h("div", { class: error ? "toast error" : "toast" }, message);
  box.appendChild(item);
  while (box.childElementCount > 3) box.removeChild(box.firstChild);
  setTimeout(() => item.remove(), error ? 8000 : 4000);
}

/** Call fn at most once per `ms`, always running the last call. */
export function throttle(fn, ms) {
  let timer = null;
  let last = 0;
  return () => {
    if (timer !== null) return;
    const wait = Math.max(0, last + ms - Date.now());
    timer = setTimeout(() => {
      timer = null;
      last = Date.now();
      fn();
    }, wait);
  };
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}
