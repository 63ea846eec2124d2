// eventbatch dashboard: plain JavaScript, no build step, no third-party code.
//
// The API key is pasted by the user and kept in sessionStorage (this tab only); every call sends
// it as an Authorization header, and it is never put in a URL. The live event feed reads the
// server-sent events of GET /v1/batches/{id}/events through fetch() and a stream reader, since
// EventSource cannot send a header. Downloads are fetched with the header and handed to the
// browser as blob: URLs. Everything from the API is written with textContent, never as HTML.
"use strict";

const KEY_ITEM = "eventbatch.apiKey";
const TERMINAL = new Set(["completed", "failed", "expired", "cancelled"]);
const CANCELLABLE = new Set(["validating", "in_progress"]);   // batch.CANCELLABLE: finalizing is past cancelling
const FEED_LIMIT = 300;            // events kept on screen; the feed itself may be much longer
const POLL_MS = 2000;

const $ = (id) => document.getElementById(id);
let view = null;                   // {stop(): void} of the page on screen

// --- the key and the API -------------------------------------------------------------------

const key = () => sessionStorage.getItem(KEY_ITEM);

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, { method = "GET", accept = "application/json", signal, raw = false } = {}) {
  const response = await fetch(path, {
    method, signal, cache: "no-store", credentials: "omit",
    headers: { Authorization: `Bearer ${key()}`, Accept: accept },
  });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message || message; } catch (_) { /* not JSON */ }
    if (response.status === 401) { signOut(`The key was refused: ${message}`); }
    throw new ApiError(response.status, message);
  }
  return raw ? response : response.json();
}

function signOut(reason) {
  sessionStorage.removeItem(KEY_ITEM);
  history.replaceState(null, "", "#/");   // no hashchange: the reason below stays on screen
  route();
  if (reason) { showAlert(reason); }
}

// --- small helpers -------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") { node.className = v; } else if (k === "data") { Object.assign(node.dataset, v); }
    else if (k === "text") { node.textContent = v; } else { node[k] = v; }
  }
  for (const child of children) { node.append(child); }
  return node;
}

function showAlert(message) { const a = $("alert"); a.textContent = message; a.hidden = !message; }

const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  if (signal) { signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true }); }
});

const n = (x) => (x ?? 0).toLocaleString();

function when(ts) {
  if (ts === null || ts === undefined) { return "—"; }
  const at = new Date(ts * 1000);
  const sameYear = at.getFullYear() === new Date().getFullYear();
  return at.toLocaleString([], { year: sameYear ? undefined : "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function ago(ts) {
  const s = Math.round(Date.now() / 1000 - ts);
  const future = s < 0;
  const a = Math.abs(s);
  const text = a < 60 ? `${a}s` : a < 3600 ? `${Math.round(a / 60)} min` : a < 86400 ? `${Math.round(a / 3600)} h`
    : `${Math.round(a / 86400)} d`;
  return future ? `in ${text}` : `${text} ago`;
}

function counts(b) {
  const rc = b.request_counts || { total: 0, completed: 0, failed: 0 };
  return { total: rc.total, succeeded: rc.completed, failed: rc.failed, done: rc.completed + rc.failed };
}

function setBar(bar, b) {
  const c = counts(b);
  const [ok, bad] = bar.children;
  // CSSOM, not a style attribute: allowed under the page's style-src 'self'.
  ok.style.width = c.total ? `${(100 * c.succeeded) / c.total}%` : "0";
  bad.style.width = c.total ? `${(100 * c.failed) / c.total}%` : "0";
  bar.title = `${c.done} of ${c.total} done, ${c.failed} failed`;
}

function statusBadge(node, status) { node.className = `status ${status}`; node.textContent = status.replace("_", " "); }

function fillList(dl, rows) {
  dl.replaceChildren(...rows.flatMap(([label, value, data]) => [
    el("dt", { text: label }), el("dd", { text: String(value), data: data || {} })]));
}

function show(section) {
  for (const id of ["login", "list", "detail"]) { $(id).hidden = id !== section; }
  $("forget").hidden = section === "login";
}

// --- the batch list ------------------------------------------------------------------------

function listView() {
  const controller = new AbortController();
  const { signal } = controller;
  const tbody = $("batches").tBodies[0];
  let pages = 1;
  let lastId = null;

  const rows = new Map();   // batch id -> its row, updated in place so a click never lands on a stale one

  function row(b) {
    let tr = rows.get(b.id);
    if (!tr) {
      const bar = el("div", { class: "progress" }, el("span", { class: "ok" }), el("span", { class: "bad" }));
      tr = el("tr", { data: { batch: b.id } },
        el("td", {}, el("a", { href: `#/batches/${encodeURIComponent(b.id)}`, class: "mono", text: b.id })),
        el("td", {}, el("span")),
        el("td", { class: "wide" }, bar, el("small")),
        el("td", { class: "num" }),
        el("td"),
        el("td", { class: "mono", text: b.endpoint }));
      rows.set(b.id, tr);
    }
    const c = counts(b);
    const cells = tr.children;
    tr.dataset.status = b.status;
    statusBadge(cells[1].firstElementChild, b.status);
    setBar(cells[2].firstElementChild, b);
    cells[2].lastElementChild.textContent = c.total ? `${n(c.done)} / ${n(c.total)} done`
      : (b.status === "validating" ? "validating…" : "no requests");
    cells[3].textContent = n(c.failed);
    cells[4].textContent = ago(b.created_at);
    cells[4].title = when(b.created_at);
    return tr;
  }

  async function load() {
    const items = [];
    let after = null;
    let more = false;
    for (let p = 0; p < pages; p++) {
      const page = await api(`/v1/batches?limit=50${after ? `&after=${encodeURIComponent(after)}` : ""}`, { signal });
      items.push(...page.data);
      more = page.has_more;
      after = page.last_id;
      if (!more) { break; }
    }
    lastId = after;
    const wanted = items.map(row);
    if (wanted.length !== tbody.children.length || wanted.some((tr, i) => tbody.children[i] !== tr)) {
      tbody.replaceChildren(...wanted);
    }
    $("empty").hidden = items.length > 0;
    $("more").hidden = !more;
    const open = items.filter((b) => !TERMINAL.has(b.status)).length;
    $("list-summary").textContent = `${items.length}${more ? "+" : ""} batch${items.length === 1 ? "" : "es"}` +
      (open ? `, ${open} running` : "");
  }

  $("more").onclick = () => { pages += 1; load().catch(report); };

  (async () => {
    while (!signal.aborted) {
      try { await load(); showAlert(""); } catch (e) { if (!signal.aborted) { report(e); } }
      await sleep(POLL_MS, signal);
    }
  })();
  show("list");
  return { stop: () => controller.abort(), lastId: () => lastId };
}

// --- one batch -----------------------------------------------------------------------------

function detailView(batchId) {
  const controller = new AbortController();
  const { signal } = controller;
  let batch = null;
  let refreshing = null;
  let armedUntil = 0;

  $("d-id").textContent = batchId;
  $("d-status").textContent = "";
  $("feed").replaceChildren();
  $("feed-state").textContent = "";
  for (const id of ["d-counts", "d-usage", "d-times", "d-info", "d-files", "d-errors"]) { $(id).replaceChildren(); }
  $("d-errors-card").hidden = true;
  $("d-cancel").hidden = true;
  $("d-cancel").classList.remove("armed");
  $("d-cancel").textContent = "Cancel batch";

  function render(b) {
    batch = b;
    const c = counts(b);
    statusBadge($("d-status"), b.status);
    $("d-status").dataset.status = b.status;
    setBar($("d-bar"), b);
    const pct = c.total ? Math.floor((100 * c.done) / c.total) : 0;
    $("d-progress-text").textContent = c.total
      ? `${n(c.done)} of ${n(c.total)} requests done (${pct}%): ${n(c.succeeded)} succeeded, ${n(c.failed)} failed`
      : (b.status === "validating" ? "Validating the input file…" : "No requests.");
    fillList($("d-counts"), [
      ["Total", n(c.total), { count: "total" }], ["Succeeded", n(c.succeeded), { count: "succeeded" }],
      ["Failed", n(c.failed), { count: "failed" }], ["Done", n(c.done), { count: "done" }],
      ["To go", n(c.total - c.done), { count: "remaining" }]]);
    const u = b.usage || {};
    fillList($("d-usage"), [
      ["Input tokens", n(u.input_tokens)], ["  cached", n(u.input_tokens_details?.cached_tokens)],
      ["Output tokens", n(u.output_tokens)], ["  reasoning", n(u.output_tokens_details?.reasoning_tokens)],
      ["Total tokens", n(u.total_tokens), { usage: "total" }]]);
    fillList($("d-times"), [
      ["created", b.created_at], ["in progress", b.in_progress_at], ["finalizing", b.finalizing_at],
      ["completed", b.completed_at], ["failed", b.failed_at], ["expired", b.expired_at],
      ["cancelling", b.cancelling_at], ["cancelled", b.cancelled_at], ["expires", b.expires_at],
    ].map(([label, ts]) => [label, when(ts), { time: label }]));
    const info = [["Endpoint", b.endpoint], ["Model", b.model || "—"], ["Window", b.completion_window],
      ["Input file", b.input_file_id]];
    if (b.retry_of) { info.push(["Retry of", b.retry_of]); }
    for (const [k, v] of Object.entries(b.metadata || {})) { info.push([`metadata ${k}`, v]); }
    fillList($("d-info"), info);
    renderFiles(b);
    const errors = b.errors?.data || [];
    $("d-errors-card").hidden = errors.length === 0;
    $("d-errors").replaceChildren(...errors.map((e) =>
      el("li", { text: `${e.line ? `line ${e.line}: ` : ""}${e.message}${e.code ? ` (${e.code})` : ""}` })));
    $("d-cancel").hidden = !CANCELLABLE.has(b.status);
  }

  function renderFiles(b) {
    const files = [["input", b.input_file_id, `${b.id}_input.jsonl`, "Download input"],
      ["output", b.output_file_id, `${b.id}_output.jsonl`, "Download output"],
      ["error", b.error_file_id, `${b.id}_error.jsonl`, "Download errors"]];
    $("d-files").replaceChildren(...files.map(([kind, fileId, name, label]) => {
      const button = el("button", { type: "button", text: label, disabled: !fileId, data: { file: kind } });
      if (!fileId) { button.title = TERMINAL.has(b.status) ? "This batch has none" : "Ready once the batch ends"; }
      button.onclick = () => download(fileId, name).catch(report);
      return button;
    }));
  }

  function refresh() {
    // One look at a time; events that arrive meanwhile ask for one more.
    if (refreshing) { refreshing.again = true; return refreshing.promise; }
    const state = { again: false };
    state.promise = (async () => {
      try {
        do {
          state.again = false;
          render(await api(`/v1/batches/${encodeURIComponent(batchId)}`, { signal }));
        } while (state.again && !signal.aborted);
      } finally { refreshing = null; }
      return batch;
    })();
    refreshing = state;
    return state.promise;
  }

  $("d-cancel").onclick = async () => {
    const button = $("d-cancel");
    if (Date.now() > armedUntil) {      // a second click within 4 s confirms
      armedUntil = Date.now() + 4000;
      button.classList.add("armed");
      button.textContent = "Click again to cancel";
      setTimeout(() => { if (Date.now() >= armedUntil) { button.classList.remove("armed"); button.textContent = "Cancel batch"; } }, 4100);
      return;
    }
    armedUntil = 0;
    button.disabled = true;
    try {
      render(await api(`/v1/batches/${encodeURIComponent(batchId)}/cancel`, { method: "POST", signal }));
    } catch (e) { report(e); } finally {
      button.disabled = false;
      button.classList.remove("armed");
      button.textContent = "Cancel batch";
    }
  };

  (async () => {
    try { await refresh(); } catch (e) { if (!signal.aborted) { report(e); } return; }
    follow(batchId, signal, (ev) => { addToFeed(ev); refresh().catch(() => {}); }).catch(report);
    // The feed says when something happens; a slow look as well, in case a proxy holds it back.
    while (!signal.aborted && batch && !TERMINAL.has(batch.status)) {
      await sleep(POLL_MS, signal);
      if (!signal.aborted) { await refresh().catch(() => {}); }
    }
  })();
  show("detail");
  return { stop: () => controller.abort() };
}

// --- the live event feed -------------------------------------------------------------------

function parseFrame(frame) {
  const ev = { id: null, type: "message", data: "" };
  for (const line of frame.split("\n")) {
    if (!line || line.startsWith(":")) { continue; }          // a comment: the server's keepalive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") { ev.id = value; } else if (field === "event") { ev.type = value; }
    else if (field === "data") { ev.data += (ev.data ? "\n" : "") + value; }
  }
  if (!ev.data) { return null; }
  try { ev.object = JSON.parse(ev.data); } catch (_) { return null; }
  return ev;
}

async function follow(batchId, signal, onEvent) {
  let lastId = null;
  let wait = 1000;
  while (!signal.aborted) {
    const headers = { Authorization: `Bearer ${key()}`, Accept: "text/event-stream" };
    if (lastId) { headers["Last-Event-ID"] = lastId; }    // resume after the last one seen
    $("feed-state").textContent = "· live";
    $("live").hidden = false;
    $("live").textContent = "● live";
    try {
      const response = await fetch(`/v1/batches/${encodeURIComponent(batchId)}/events`,
        { headers, signal, cache: "no-store", credentials: "omit" });
      if (!response.ok) { throw new ApiError(response.status, `the event feed answered ${response.status}`); }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) { break; }
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const ev = parseFrame(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (ev) { lastId = ev.id || lastId; onEvent(ev); }
        }
      }
      wait = 1000;
    } catch (e) {
      if (signal.aborted) { break; }
      if (e instanceof ApiError && e.status < 500) { $("feed-state").textContent = `· ${e.message}`; break; }
      $("feed-state").textContent = "· reconnecting…";
      await sleep(wait, signal);
      wait = Math.min(wait * 2, 15000);
      continue;
    }
    // The server ends the feed when the batch has ended; otherwise (a restart) follow on.
    let status = null;
    try { status = (await api(`/v1/batches/${encodeURIComponent(batchId)}`, { signal })).status; } catch (_) { /* next round */ }
    if (TERMINAL.has(status)) { $("feed-state").textContent = "· the batch has ended"; break; }
    await sleep(wait, signal);
  }
  $("live").hidden = true;
}

function describe(type, data) {
  switch (type) {
    case "batch_created": return `from ${data.input_file_id} to ${data.endpoint}`;
    case "batch_validated": return `${n(data.total)} requests${data.model ? ` for ${data.model}` : ""}`;
    case "batch_validation_failed": return `${n(data.error_count)} error(s)${data.errors?.[0] ? `: ${data.errors[0].message}` : ""}`;
    case "request_succeeded": return `${data.custom_id} → ${data.status_code}${data.attempts?.length > 1 ? ` after ${data.attempts.length} attempts` : ""}`;
    case "request_failed": return `${data.custom_id} → ${data.status_code ?? data.error_code ?? "failed"}${data.error_message ? `: ${data.error_message}` : ""}`;
    case "batch_output_written": return [data.output_file_id && `output ${data.output_file_id}`, data.error_file_id && `errors ${data.error_file_id}`].filter(Boolean).join(", ") || "no files";
    default: return "";
  }
}

function addToFeed(ev) {
  const feed = $("feed");
  const data = ev.object.data || {};
  const type = ev.object.type || ev.type;
  const kind = type.startsWith("batch_") ? "batch" : type === "request_failed" ? "bad" : "";
  const at = new Date(ev.object.created_at * 1000);
  feed.append(el("li", { data: { type } },
    el("time", { dateTime: at.toISOString(), text: at.toLocaleTimeString() }),
    el("span", { class: `type ${kind}`, text: type }),
    el("span", { class: "what", text: describe(type, data) })));
  while (feed.children.length > FEED_LIMIT) { feed.firstElementChild.remove(); }
  feed.scrollTop = feed.scrollHeight;
}

// --- downloads -----------------------------------------------------------------------------

async function download(fileId, name) {
  const response = await api(`/v1/files/${encodeURIComponent(fileId)}/content`, { raw: true, accept: "*/*" });
  const url = URL.createObjectURL(await response.blob());
  const link = el("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

// --- errors, routing, start ----------------------------------------------------------------

function report(e) {
  if (e?.name === "AbortError") { return; }
  if (e instanceof ApiError && e.status === 401) { return; }   // signOut said it
  showAlert(e instanceof ApiError ? e.message : `Cannot reach the eventbatch API (${e?.message || e}).`);
}

function route() {
  if (view) { view.stop(); view = null; }
  showAlert("");
  if (!key()) { show("login"); $("key").focus(); return; }
  const match = location.hash.match(/^#\/batches\/([^/]+)$/);
  view = match ? detailView(decodeURIComponent(match[1])) : listView();
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("key").value.trim();
    $("key").value = "";
    if (!value) { return; }
    sessionStorage.setItem(KEY_ITEM, value);
    route();
  });
  $("forget").onclick = () => signOut("");
  window.addEventListener("hashchange", route);
  route();
});
