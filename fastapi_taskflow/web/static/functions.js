// Registered task functions with their settings and per-function statistics.

import { api } from "./api.js";
import { clear, fmtCount, fmtDuration, fmtPercent, funcName, h, toast } from "./dom.js";

function backoff(fn) {
  if (!fn.retries) return "–";
  let text = `${fn.delay}s × ${fn.backoff}`;
  if (fn.max_delay !== null) text += ` ≤ ${fn.max_delay}s`;
  return text;
}

function rate(stats) {
  if (!stats || stats.success_rate === null) return "–";
  return h(
    "span",
    null,
    h("meter", { min: "0", max: "1", low: "0.8", high: "0.95", optimum: "1", value: String(stats.success_rate) }),
    fmtPercent(stats.success_rate),
  );
}

export async function loadFunctions() {
  const body = document.querySelector("#functions tbody");
  let functions;
  let stats;
  try {
    [functions, stats] = await Promise.all([api("/functions"), api("/stats")]);
  } catch (error) {
    toast(`Could not load functions: ${error.message}`, { error: true });
    return;
  }
  const byName = new Map(stats.functions.map((s) => [s.func_name, s]));
  const names = new Set(functions.map((f) => f.name));
  const rows = functions.map((fn) => ({ fn, stats: byName.get(fn.name) }));
  for (const s of stats.functions) if (!names.has(s.func_name)) rows.push({ fn: null, stats: s });
  clear(body);
  for (const { fn, stats: s } of rows) {
    const name = fn ? fn.name : s.func_name;
    body.appendChild(
      h(
        "tr",
        { dataset: { name } },
        h("td", null, funcName(name)),
        h("td", null, fn ? (fn.is_async ? "async" : "sync") : "not registered"),
        h("td", { class: "num" }, fn ? String(fn.retries) : "–"),
        h("td", null, fn ? backoff(fn) : "–"),
        h("td", { class: "num" }, fn && fn.timeout !== null ? fmtDuration(fn.timeout) : "–"),
        h("td", null, fn ? fn.queue || "default" : "–"),
        h("td", null, fn ? (fn.persist ? "yes" : "no") : "–"),
        h("td", { class: "num" }, s ? fmtCount(s.total) : "0"),
        h("td", null, rate(s)),
        h("td", { class: "num" }, s && s.duration_p50 !== null ? fmtDuration(s.duration_p50) : "–"),
        h("td", { class: "num" }, s && s.duration_p95 !== null ? fmtDuration(s.duration_p95) : "–"),
      ),
    );
  }
  document.getElementById("functions-empty").hidden = rows.length > 0;
}
