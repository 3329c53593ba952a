// The task table: server-side filters, search and keyset pages; live rows from events.

import { api, filterParams, url } from "./api.js";
import {
  clear,
  debounce,
  fmtDate,
  fmtDuration,
  funcName,
  h,
  isoToLocalInput,
  localInputToIso,
  statusBadge,
  toast,
} from "./dom.js";

function newerFirst(a, b) {
  const diff = Date.parse(b.created_at) - Date.parse(a.created_at);
  if (diff !== 0) return diff;
  return a.task_id < b.task_id ? 1 : a.task_id > b.task_id ? -1 : 0;
}

export class TaskTable {
  constructor({ onOpen }) {
    this.onOpen = onOpen;
    this.form = document.getElementById("filters");
    this.body = document.querySelector("#tasks tbody");
    this.empty = document.getElementById("empty");
    this.olderButton = document.getElementById("older");
    this.newerButton = document.getElementById("newer");
    this.pageLabel = document.getElementById("page-label");
    this.newPill = document.getElementById("new-tasks");
    this.retryButton = document.getElementById("retry-selected");
    this.selectAll = document.getElementById("select-all");
    this.exportLink = document.getElementById("export");
    this.pageSize = document.getElementById("page-size");
    this.mode = "tasks";
    this.filter = { q: "", status: "", func_name: "", queue: "", since: "" };
    this.limit = 50;
    this.cursors = [null];
    this.nextCursor = null;
    this.stale = false;
    this.rows = new Map(); // task_id -> { row, tr }
    this.selected = new Set();
    this.activeId = null;
    this.newCount = 0;
    this.loadToken = 0;
    this.arrived = null; // changes that arrive while a page loads, replayed after it
    this.bind();
  }

  bind() {
    const reload = () => {
      this.readForm();
      this.firstPage();
    };
    this.form.addEventListener("change", reload);
    this.form.elements.q.addEventListener("input", debounce(reload, 250));
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      reload();
    });
    this.form.addEventListener("reset", () => setTimeout(reload, 0));
    this.pageSize.addEventListener("change", () => {
      this.limit = Number(this.pageSize.value) || 50;
      this.firstPage();
    });
    this.olderButton.addEventListener("click", () => this.older());
    this.newerButton.addEventListener("click", () => this.newer());
    this.newPill.addEventListener("click", () => this.firstPage());
    this.retryButton.addEventListener("click", () => this.retrySelected());
    this.selectAll.addEventListener("change", () => {
      for (const id of this.rows.keys()) {
        if (this.selectAll.checked) this.selected.add(id);
        else this.selected.delete(id);
      }
      for (const { tr } of this.rows.values()) {
        tr.querySelector("input[type=checkbox]").checked = this.selectAll.checked;
      }
      this.updateSelection();
    });
    this.body.addEventListener("click", (event) => {
      const tr = event.target.closest("tr[data-id]");
      if (!tr || event.target.closest(".col-select")) return;
      this.onOpen(tr.dataset.id);
    });
    this.body.addEventListener("keydown", (event) => {
      const tr = event.target.closest("tr[data-id]");
      if (tr && event.key === "Enter") this.onOpen(tr.dataset.id);
    });
    this.body.addEventListener("change", (event) => {
      const box = event.target.closest("input[type=checkbox]");
      const tr = event.target.closest("tr[data-id]");
      if (!box || !tr) return;
      if (box.checked) this.selected.add(tr.dataset.id);
      else this.selected.delete(tr.dataset.id);
      this.updateSelection();
    });
  }

  /** Filters from the page's query string (so a reload keeps them). */
  restore(params) {
    for (const key of ["q", "status", "func_name", "queue"]) {
      const value = params.get(key) || "";
      this.filter[key] = value;
      const field = this.form.elements[key];
      if (field.tagName === "SELECT" && value && !field.querySelector(`option[value="${CSS.escape(value)}"]`)) {
        field.appendChild(h("option", { value }, value));
      }
      field.value = value;
    }
    const since = params.get("since") || "";
    this.filter.since = since;
    this.form.elements.since.value = since ? isoToLocalInput(since) : "";
  }

  readForm() {
    const els = this.form.elements;
    this.filter = {
      q: els.q.value.trim(),
      status: els.status.value,
      func_name: els.func_name.value,
      queue: els.queue.value,
      since: localInputToIso(els.since.value),
    };
  }

  effectiveFilter() {
    return this.mode === "failed" ? { ...this.filter, status: "failed" } : this.filter;
  }

  setMode(mode) {
    this.mode = mode;
    this.form.elements.status.disabled = mode === "failed";
    this.firstPage();
  }

  params() {
    const params = filterParams(this.effectiveFilter());
    params.set("limit", String(this.limit));
    return params;
  }

  firstPage() {
    this.cursors = [null];
    this.newCount = 0;
    this.newPill.hidden = true;
    return this.load();
  }

  async older() {
    if (this.stale && this.cursors.length === 1) await this.load();
    if (!this.nextCursor) return;
    this.cursors.push(this.nextCursor);
    await this.load();
  }

  newer() {
    if (this.cursors.length > 1) this.cursors.pop();
    if (this.cursors.length === 1) return this.firstPage();
    return this.load();
  }

  async load() {
    const token = ++this.loadToken;
    const params = this.params();
    const cursor = this.cursors[this.cursors.length - 1];
    if (cursor) params.set("cursor", cursor);
    this.syncLocation();
    this.arrived = new Map();
    let page;
    try {
      page = await api("/rows", { params });
    } catch (error) {
      if (token === this.loadToken) {
        this.arrived = null;
        toast(`Could not load tasks: ${error.message}`, { error: true });
      }
      return;
    }
    if (token !== this.loadToken) return;
    this.nextCursor = page.next_cursor;
    this.stale = false;
    const arrived = this.arrived;
    this.arrived = null;
    this.render(page.items);
    // The page was read at some moment during the request; newer changes win.
    for (const row of arrived.values()) this.apply(row);
  }

  syncLocation() {
    const params = filterParams(this.filter);
    if (this.mode !== "tasks") params.set("view", this.mode);
    const query = params.toString();
    window.history.replaceState(null, "", query ? `?${query}` : window.location.pathname);
    const exportParams = filterParams(this.effectiveFilter());
    exportParams.set("limit", "10000");
    this.exportLink.setAttribute("href", url("/export.csv", exportParams));
  }

  render(items) {
    if (!performance.getEntriesByName("taskflow:rows").length) performance.mark("taskflow:rows");
    clear(this.body);
    this.rows.clear();
    for (const row of items) {
      const tr = this.rowElement(row);
      this.rows.set(row.task_id, { row, tr });
      this.body.appendChild(tr);
    }
    for (const id of [...this.selected]) if (!this.rows.has(id)) this.selected.delete(id);
    this.updateSelection();
    this.updatePager();
  }

  /** Take a deleted task's row off the page. */
  forget(taskId) {
    const entry = this.rows.get(taskId);
    if (!entry) return;
    entry.tr.remove();
    this.rows.delete(taskId);
    this.selected.delete(taskId);
    this.updateSelection();
  }

  updatePager() {
    const first = this.cursors.length === 1;
    this.empty.hidden = this.rows.size > 0;
    this.newerButton.disabled = first;
    this.olderButton.disabled = !this.nextCursor && !this.stale;
    this.pageLabel.textContent = `Page ${this.cursors.length}`;
  }

  rowElement(row) {
    const checked = this.selected.has(row.task_id);
    const tr = h(
      "tr",
      { tabindex: "0", dataset: { id: row.task_id, status: row.status } },
      h(
        "td",
        { class: "col-select act" },
        h("input", { type: "checkbox", "aria-label": `Select task ${row.task_id}`, checked }),
      ),
      h("td", null, statusBadge(row.status)),
      h("td", null, funcName(row.func_name)),
      h("td", null, row.queue),
      h("td", { class: "num" }, fmtDuration(row.duration)),
      h("td", { class: "num" }, String(row.attempts)),
      h("td", { title: row.created_at }, fmtDate(row.created_at)),
      h("td", { class: "error-cell", title: row.error || null }, row.error || ""),
    );
    if (row.task_id === this.activeId) tr.classList.add("active");
    return tr;
  }

  setActive(taskId) {
    this.activeId = taskId;
    for (const [id, { tr }] of this.rows) tr.classList.toggle("active", id === taskId);
  }

  matches(row) {
    const f = this.effectiveFilter();
    if (f.status && row.status !== f.status) return false;
    if (f.func_name && row.func_name !== f.func_name) return false;
    if (f.queue && row.queue !== f.queue) return false;
    if (f.since && Date.parse(row.created_at) < Date.parse(f.since)) return false;
    if (f.q) {
      const needle = f.q.toLowerCase();
      const hay = [row.task_id, row.func_name, row.error || ""];
      if (!hay.some((part) => part.toLowerCase().includes(needle))) return false;
    }
    return true;
  }

  /** A live change of one task: update its row, or add it when it belongs on this page. */
  apply(row) {
    if (this.arrived) {
      this.arrived.set(row.task_id, row);
      return;
    }
    const known = this.rows.get(row.task_id);
    if (known && Date.parse(row.updated_at) < Date.parse(known.row.updated_at)) return;
    if (known) {
      const tr = this.rowElement(row);
      known.tr.replaceWith(tr);
      this.rows.set(row.task_id, { row, tr });
      return;
    }
    if (!this.matches(row)) return;
    if (this.cursors.length > 1) {
      this.newCount += 1;
      this.newPill.textContent = `${this.newCount} new — show`;
      this.newPill.hidden = false;
      return;
    }
    const tr = this.rowElement(row);
    tr.classList.add("fresh");
    let before = null;
    for (const { row: other, tr: otherTr } of this.rows.values()) {
      if (newerFirst(row, other) < 0 && (!before || newerFirst(other, before.row) < 0)) {
        before = { row: other, tr: otherTr };
      }
    }
    if (before) this.body.insertBefore(tr, before.tr);
    else if (this.rows.size < this.limit) this.body.appendChild(tr);
    else return; // older than everything on a full first page
    this.rows.set(row.task_id, { row, tr });
    if (this.rows.size > this.limit) {
      let last = null;
      for (const entry of this.rows.values()) {
        if (!last || newerFirst(entry.row, last.row) > 0) last = entry;
      }
      last.tr.remove();
      this.rows.delete(last.row.task_id);
      this.selected.delete(last.row.task_id);
      this.stale = true; // the next page's cursor no longer follows the last row
    }
    this.updatePager();
  }

  updateSelection() {
    const count = this.selected.size;
    this.retryButton.disabled = count === 0;
    this.retryButton.textContent = count ? `Retry selected (${count})` : "Retry selected";
    this.selectAll.checked = count > 0 && count === this.rows.size;
  }

  async retrySelected() {
    const ids = [...this.selected];
    if (!ids.length) return;
    this.retryButton.disabled = true;
    try {
      const result = await api("/retry", { method: "POST", body: { task_ids: ids } });
      this.selected.clear();
      for (const { tr } of this.rows.values()) tr.querySelector("input[type=checkbox]").checked = false;
      reportBulk(result);
    } catch (error) {
      toast(`Retry failed: ${error.message}`, { error: true });
    } finally {
      this.updateSelection();
    }
  }
}

export function reportBulk(result) {
  const done = result.retried.length;
  const failed = result.errors.length;
  let message = `${done} task${done === 1 ? "" : "s"} sent to run again`;
  if (failed) message += `; ${failed} could not be retried (${result.errors[0].detail})`;
  toast(message, { error: failed > 0 && done === 0 });
}
