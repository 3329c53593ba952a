// The detail panel of one task: facts, arguments, attempts, logs, error and stack trace.

import { api } from "./api.js";
import {
  clear,
  fmtDate,
  fmtDuration,
  fmtTime,
  h,
  levelBadge,
  statusBadge,
  throttle,
  toast,
} from "./dom.js";

const RETRYABLE = new Set(["failed", "cancelled", "interrupted", "rejected"]);
const CANCELLABLE = new Set(["pending", "running"]);

function section(title, ...content) {
  return [h("h3", null, title), ...content];
}

function pretty(value) {
  return h("pre", { class: "mono" }, JSON.stringify(value, null, 2));
}

function facts(task) {
  const entries = [
    ["Task id", h("code", null, task.task_id)],
    ["Function", h("code", null, task.func_name)],
    ["Queue", task.queue],
    ["Priority", task.priority ?? "–"],
    ["Source", task.source],
    ["Created", fmtDate(task.created_at)],
    ["Started", task.start_time ? fmtDate(task.start_time) : "–"],
    ["Finished", task.end_time ? fmtDate(task.end_time) : "–"],
    ["Duration", task.duration === null ? "–" : fmtDuration(task.duration)],
    ["Retries used", String(task.retries_used)],
  ];
  if (task.retry_of) entries.push(["Retry of", h("code", null, task.retry_of)]);
  if (task.idempotency_key) entries.push(["Idempotency key", h("code", null, task.idempotency_key)]);
  if (task.instance_id) entries.push(["Instance", h("code", null, task.instance_id)]);
  return h(
    "dl",
    { class: "facts" },
    entries.map(([label, value]) => [h("dt", null, label), h("dd", null, value)]),
  );
}

function timeline(attempts) {
  return h(
    "ol",
    { class: "timeline" },
    attempts.map((attempt) => {
      const state = attempt.error ? "failed" : attempt.end_time ? "done" : "open";
      const took = attempt.end_time
        ? fmtDuration((Date.parse(attempt.end_time) - Date.parse(attempt.start_time)) / 1000)
        : "running";
      return h(
        "li",
        { class: state },
        h("strong", null, `Attempt ${attempt.number}`),
        ` · ${fmtTime(attempt.start_time)} · ${took}`,
        attempt.error ? h("div", { class: "error-text" }, attempt.error) : null,
      );
    }),
  );
}

function logTable(logs) {
  return h(
    "table",
    { class: "logs" },
    h(
      "tbody",
      null,
      logs.map((entry) => {
        const extra = entry.extra && Object.keys(entry.extra).length ? entry.extra : null;
        return h(
          "tr",
          { dataset: { level: entry.level } },
          h("td", { class: "mono muted" }, fmtTime(entry.timestamp)),
          h("td", null, levelBadge(entry.level)),
          h("td", { class: "muted", title: "attempt" }, `#${entry.attempt}`),
          h(
            "td",
            { class: "message" },
            entry.message,
            extra ? h("div", { class: "mono muted" }, JSON.stringify(extra)) : null,
          ),
        );
      }),
    ),
  );
}

export class DetailPanel {
  constructor({ canAct, onClose, onDeleted }) {
    this.canAct = canAct;
    this.onClose = onClose;
    this.onDeleted = onDeleted;
    this.panel = document.getElementById("detail");
    this.body = document.getElementById("detail-body");
    this.title = document.getElementById("detail-title");
    this.taskId = null;
    this.refreshSoon = throttle(() => this.refresh(), 400);
    document.getElementById("detail-close").addEventListener("click", () => this.close());
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !this.panel.hidden) this.close();
    });
  }

  async open(taskId) {
    this.taskId = taskId;
    this.panel.hidden = false;
    this.title.textContent = "Task";
    clear(this.body).appendChild(h("p", { class: "muted" }, "Loading…"));
    await this.refresh();
  }

  close() {
    this.taskId = null;
    this.panel.hidden = true;
    this.onClose();
  }

  /** A live change arrived for a task; refetch it when it is the one shown. */
  changed(taskId) {
    if (taskId === this.taskId) this.refreshSoon();
  }

  async refresh() {
    const taskId = this.taskId;
    if (!taskId) return;
    let task;
    try {
      task = await api(`/${encodeURIComponent(taskId)}`);
    } catch (error) {
      if (taskId === this.taskId) {
        clear(this.body).appendChild(h("p", { class: "form-error" }, error.message));
      }
      return;
    }
    if (taskId === this.taskId) this.render(task);
  }

  actions(task) {
    if (!this.canAct) return null;
    const buttons = [];
    if (RETRYABLE.has(task.status)) {
      const retry = h("button", { type: "button", class: "primary", id: "detail-retry" }, "Retry");
      retry.addEventListener("click", () => this.act(retry, "retry"));
      buttons.push(retry);
    }
    if (CANCELLABLE.has(task.status)) {
      const cancel = h("button", { type: "button", class: "danger", id: "detail-cancel" }, "Cancel");
      cancel.addEventListener("click", () => this.act(cancel, "cancel"));
      buttons.push(cancel);
    }
    if (!CANCELLABLE.has(task.status)) {
      const remove = h("button", { type: "button", class: "danger", id: "detail-delete" }, "Delete");
      remove.addEventListener("click", () => this.remove(remove));
      buttons.push(remove);
    }
    return buttons.length ? h("div", { class: "detail-actions" }, buttons) : null;
  }

  /** Delete the finished task shown (after the user confirms): from every view and store. */
  async remove(button) {
    const taskId = this.taskId;
    if (!window.confirm("Delete this task and its history? This cannot be undone.")) return;
    button.disabled = true;
    try {
      await api(`/${encodeURIComponent(taskId)}`, { method: "DELETE" });
    } catch (error) {
      toast(`Delete failed: ${error.message}`, { error: true });
      button.disabled = false;
      await this.refresh();
      return;
    }
    toast("Task deleted");
    if (taskId === this.taskId) this.close();
    this.onDeleted(taskId);
  }

  async act(button, action) {
    const taskId = this.taskId;
    button.disabled = true;
    try {
      const result = await api(`/${encodeURIComponent(taskId)}/${action}`, { method: "POST" });
      if (action === "retry") {
        toast(result.task_id === taskId ? "Task sent to run again" : `Retried as ${result.task_id}`);
        if (result.task_id !== taskId) await this.open(result.task_id);
      } else {
        toast("Task cancelled");
      }
    } catch (error) {
      toast(`${action === "retry" ? "Retry" : "Cancel"} failed: ${error.message}`, { error: true });
    } finally {
      button.disabled = false;
      await this.refresh();
    }
  }

  render(task) {
    this.title.textContent = task.func_name.split(".").pop();
    const args = task.args !== null || task.kwargs !== null;
    const tags = Object.entries(task.tags || {});
    const chips = tags.map(([key, value]) => h("span", { class: "chip" }, `${key}=${value}`));
    const logs = task.logs.length
      ? logTable(task.logs)
      : h("p", { class: "muted" }, "No log lines.");
    const trace = h("pre", { class: "mono", id: "detail-stacktrace" }, task.stacktrace);
    const parts = [
      h("div", { class: "detail-title-row" }, statusBadge(task.status), h("code", null, task.task_id)),
      this.actions(task),
      facts(task),
      tags.length ? section("Tags", h("div", { class: "chips" }, chips)) : null,
      args ? section("Arguments", pretty({ args: task.args, kwargs: task.kwargs })) : null,
      task.error
        ? section("Error", h("pre", { class: "error-text", id: "detail-error" }, task.error))
        : null,
      task.attempts.length ? section("Attempts", timeline(task.attempts)) : null,
      section(`Logs (${task.logs.length})`, logs),
      task.stacktrace
        ? section("Stack trace", h("details", { open: true }, h("summary", null, "Show"), trace))
        : null,
    ];
    clear(this.body).append(...parts.flat().filter(Boolean));
  }
}
