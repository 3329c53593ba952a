// The dashboard: session, metric cards, views, theme and the live stream.

import { ROOT, api, configure } from "./api.js";
import { DetailPanel } from "./detail.js";
import { fmtCount, fmtPercent, h, isoToLocalInput, localInputToIso, throttle, toast } from "./dom.js";
import { loadFunctions } from "./functions.js";
import { connectLive } from "./live.js";
import { TaskTable, reportBulk } from "./tasks.js";

const state = { session: null, view: "tasks", functionsStale: true };

function unauthorized() {
  const login = state.session && state.session.login_path;
  if (login || !state.session) window.location.assign(`${ROOT}/login`);
}

async function loadSession() {
  const session = await api("/session");
  state.session = session;
  configure({ token: session.csrf_token });
  document.body.classList.toggle("read-only", !session.can_act);
  const user = document.getElementById("user");
  if (session.user) {
    user.replaceChildren(session.user, h("span", { class: "role" }, session.role));
    user.hidden = false;
  }
  document.getElementById("logout").hidden = !session.logout_path;
  return session;
}

async function refreshMetrics() {
  let metrics;
  try {
    metrics = await api("/metrics");
  } catch (error) {
    return;
  }
  const values = {
    total: fmtCount(metrics.total),
    success_rate: fmtPercent(metrics.success_rate),
    waiting: fmtCount(Object.values(metrics.queues).reduce((sum, q) => sum + q.waiting, 0)),
  };
  for (const status of ["pending", "running", "success", "failed"]) {
    values[status] = fmtCount(metrics.by_status[status]);
  }
  for (const [key, text] of Object.entries(values)) {
    const card = document.querySelector(`.card[data-metric="${key}"] .card-value`);
    if (card) card.textContent = text;
  }
  const failed = metrics.by_status.failed;
  document.getElementById("failed-count").textContent = failed ? fmtCount(failed) : "";
  fillOptions("queue", Object.keys(metrics.queues));
}

/** Add the names the selects do not list yet (functions, queues). */
function fillOptions(name, values) {
  for (const select of document.querySelectorAll(`select[name="${name}"]`)) {
    const known = new Set([...select.options].map((o) => o.value));
    for (const value of [...values].sort()) {
      if (!known.has(value)) select.appendChild(h("option", { value }, value));
    }
  }
}

async function loadFunctionNames() {
  try {
    const functions = await api("/functions");
    fillOptions("func_name", functions.map((f) => f.name));
  } catch (error) {
    // the table still works without the list
  }
}

function setView(view, table) {
  state.view = view;
  for (const tab of document.querySelectorAll(".tab")) {
    tab.setAttribute("aria-pressed", String(tab.dataset.view === view));
  }
  document.getElementById("view-tasks").hidden = view === "functions";
  document.getElementById("view-functions").hidden = view !== "functions";
  document.getElementById("replay").hidden = view !== "failed";
  if (view === "functions") {
    loadFunctions();
    state.functionsStale = false;
  } else if (table.mode !== view) {
    table.setMode(view);
  }
}

function setupTheme() {
  document.getElementById("theme-toggle").addEventListener("click", () => {
    const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    try {
      window.localStorage.setItem("taskflow-theme", next);
    } catch (e) {
      // private mode: the choice lasts for this page only
    }
  });
}

function setupReplay() {
  const form = document.getElementById("replay");
  const since = form.elements.since;
  since.value = isoToLocalInput(new Date(Date.now() - 24 * 3600 * 1000).toISOString());
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { since: localInputToIso(since.value) };
    if (form.elements.func_name.value) body.func_name = form.elements.func_name.value;
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      reportBulk(await api("/replay", { method: "POST", body }));
    } catch (error) {
      toast(`Replay failed: ${error.message}`, { error: true });
    } finally {
      button.disabled = false;
    }
  });
}

async function main() {
  configure({ unauthorized });
  setupTheme();
  let session;
  try {
    session = await loadSession();
  } catch (error) {
    if (error.status !== 401) toast(`Could not load the dashboard: ${error.message}`, { error: true });
    return;
  }
  const detail = new DetailPanel({
    canAct: session.can_act,
    onClose: () => table.setActive(null),
    onDeleted: (taskId) => {
      table.forget(taskId);
      refreshMetrics();
    },
  });
  const table = new TaskTable({
    onOpen: (taskId) => {
      table.setActive(taskId);
      detail.open(taskId);
    },
  });
  const params = new URLSearchParams(window.location.search);
  table.restore(params);
  const view = ["tasks", "failed", "functions"].includes(params.get("view")) ? params.get("view") : "tasks";
  table.mode = view === "failed" ? "failed" : "tasks";
  table.form.elements.status.disabled = table.mode === "failed";
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => setView(tab.dataset.view, table));
  }
  setupReplay();
  document.getElementById("logout").addEventListener("click", async () => {
    try {
      await api("/logout", { method: "POST" });
    } finally {
      window.location.replace(`${ROOT}/login`);
    }
  });

  const metricsSoon = throttle(refreshMetrics, 2000);
  const functionsSoon = throttle(() => {
    if (state.view === "functions") loadFunctions();
    else state.functionsStale = true;
  }, 5000);
  connectLive({
    onTask: (row) => {
      table.apply(row);
      detail.changed(row.task_id);
      metricsSoon();
      functionsSoon();
    },
    onReset: () => {
      table.load();
      metricsSoon();
      if (detail.taskId) detail.refresh();
    },
    onState: (live) => {
      const badge = document.getElementById("live");
      badge.dataset.state = live;
      badge.querySelector(".live-label").textContent =
        live === "live" ? "Live" : live === "offline" ? "Offline" : "Reconnecting";
      if (live === "offline") loadSession().catch(() => {});
    },
  });
  await Promise.all([table.load(), refreshMetrics(), loadFunctionNames()]);
  setView(view, table);
  document.body.dataset.ready = "true";
}

main();
