// The operators' dashboard: plain JavaScript over the platform's own HTTP and
// WebSocket API. Every value from the server is put into the page as text
// (textContent), never as HTML. The credential lives in this tab's session
// storage only and travels in the Authorization header, never in a URL, but
// for the WebSocket route, which a browser can authenticate only with an
// API key in its query.
"use strict";

const state = {
  token: null,
  tenant: null, // the x-tenant-id to send (shared deployments), or null
  operator: false,
  tenants: [],
  record: null,
  chatKey: null, // an API key with the chat scope, for the WebSocket route
  documentsCursor: null,
  sessionsCursor: null,
  historySession: null,
  socket: null,
  socketUrl: null,
  assistant: null, // the <li> the streamed answer is written into
};

const $ = (sel) => document.querySelector(sel);

// Builds an element; strings among `children` become text nodes.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function table(target, headers, rows) {
  const t = typeof target === "string" ? $(target) : target;
  t.replaceChildren(
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { class: h.n ? "n" : null }, h.label || h)))),
    el("tbody", {}, rows.length === 0
      ? el("tr", {}, el("td", { colspan: headers.length, class: "muted" }, "nothing yet"))
      : rows.map((cells) => el("tr", {}, cells.map((c, i) => el("td", { class: headers[i].n ? "n" : null }, c))))),
  );
}

const fmtTime = (ms) => (ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) + "Z" : "—");
const fmtNum = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"));
const fmtCost = (micros) => (micros === null || micros === undefined ? "—" : "$" + (micros / 1e6).toFixed(4));
const badge = (text, kind) => el("span", { class: "badge " + (kind || "") }, text);

function setStatus(text, isError) {
  const s = $("#status");
  s.textContent = text || "";
  s.className = isError ? "error" : "muted";
}

// One request to the platform. Resolves to the parsed JSON body (null for an
// empty one); rejects with an Error carrying `status` and `code`.
async function api(method, path, body, token) {
  const headers = { authorization: "Bearer " + (token || state.token) };
  if (state.tenant) headers["x-tenant-id"] = state.tenant;
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { raw: text };
  }
  if (!res.ok) {
    const error = (data && data.error) || {};
    const err = new Error(`${res.status} ${error.code || ""}: ${error.message || res.statusText}`);
    err.status = res.status;
    err.code = error.code;
    throw err;
  }
  return data;
}

// Runs an action and shows its failure in the status line instead of losing it.
async function attempt(what, fn) {
  try {
    setStatus(what + "…");
    const out = await fn();
    setStatus("");
    return out;
  } catch (e) {
    setStatus(what + " failed: " + e.message, true);
    return undefined;
  }
}

// ---- signing in ---------------------------------------------------------

function keyTenant(token) {
  const m = /^tp_([a-z0-9][a-z0-9-]{0,62})_[0-9a-f]{12}_[0-9a-f]{64}$/.exec(token || "");
  return m ? m[1] : null;
}

async function signIn(token, tenant) {
  state.token = token;
  state.tenant = tenant || keyTenant(token) || null;
  state.operator = false;
  state.tenants = [];
  // The operator may list the deployment's tenants; anyone else is refused.
  try {
    const listed = await api("GET", "/admin/tenants");
    state.operator = true;
    state.tenants = (listed && listed.tenants) || [];
    if (!state.tenant && state.tenants.length > 0) state.tenant = state.tenants[0].tenantId;
  } catch (e) {
    if (e.status === 401) throw new Error("this token is not valid here (" + e.message + ")");
    // 403 is a tenant admin's key; anything else is a failure, not an answer.
    if (e.status !== 403) throw e;
  }
  state.record = (await api("GET", "/admin/tenant")).tenant;
  state.tenant = state.tenant || state.record.tenantId;
  sessionStorage.setItem("tp.token", token);
  if (tenant) sessionStorage.setItem("tp.tenant", tenant);
  else sessionStorage.removeItem("tp.tenant");
}

function signOut() {
  sessionStorage.removeItem("tp.token");
  sessionStorage.removeItem("tp.tenant");
  closeSocket();
  Object.assign(state, { token: null, tenant: null, operator: false, tenants: [], record: null, chatKey: null });
  clearViews();
  $("#chat-key").value = "";
  $("#app").hidden = true;
  $("#login").hidden = false;
  $("#logout-btn").hidden = true;
  $("#tenant-picker").hidden = true;
  $("#who").textContent = "";
}

function showApp() {
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#logout-btn").hidden = false;
  const who = state.operator ? "operator" : "tenant admin";
  $("#who").textContent = `${who} · ${state.tenant}`;
  for (const b of document.querySelectorAll("nav button[data-operator]")) b.hidden = !state.operator;
  const picker = $("#tenant-picker");
  picker.hidden = !(state.operator && state.tenants.length > 1);
  $("#tenant-select").replaceChildren(
    ...state.tenants.map((t) => el("option", { value: t.tenantId, selected: t.tenantId === state.tenant }, t.tenantId)),
  );
  if (!$("#chat-session").value) $("#chat-session").value = "dash-" + Math.random().toString(16).slice(2, 10);
  show("overview");
}

// ---- views ----------------------------------------------------------------

const views = {
  overview: renderOverview,
  tenants: renderTenants,
  keys: renderKeys,
  usage: renderUsage,
  limits: renderLimits,
  ingest: renderIngest,
  sessions: renderSessions,
  search: () => {},
  chat: () => {},
  metrics: renderMetrics,
  config: () => {},
};

function show(view) {
  for (const b of document.querySelectorAll("nav button")) b.classList.toggle("active", b.dataset.view === view);
  for (const p of document.querySelectorAll("section[data-panel]")) p.hidden = p.dataset.panel !== view;
  setStatus("");
  return views[view]();
}

function kv(pairs) {
  return el("dl", { class: "kv" }, pairs.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

async function renderOverview() {
  const record = await attempt("loading the tenant", () => api("GET", "/admin/tenant"));
  if (!record) return;
  state.record = record.tenant;
  const s = state.record.settings || {};
  const models = s.defaultModels || {};
  $("#overview-body").replaceChildren(kv([
    ["tenant", state.record.tenantId],
    ["name", s.displayName || "—"],
    ["created", fmtTime(state.record.createdAtMs)],
    ["chat model", models.chat || "—"],
    ["fallbacks", (models.chatFallbacks || []).join(", ") || "none"],
    ["embedding model", models.embedding || "—"],
    ["anonymous", `search ${s.anonymous && s.anonymous.search ? "on" : "off"}, chat ${s.anonymous && s.anonymous.chat ? "on" : "off"}`],
    ["search floor", s.searchFloor === null || s.searchFloor === undefined ? "default" : String(s.searchFloor)],
    ["AI Gateway", s.aiGateway ? s.aiGateway.id : "none"],
  ]));
}

async function renderTenants() {
  const listed = await attempt("listing tenants", () => api("GET", "/admin/tenants"));
  if (!listed) return;
  state.tenants = listed.tenants || [];
  table("#tenants-table",
    ["tenant", "name", "status", "created", { label: "keys", n: true }, ""],
    state.tenants.map((t) => [
      t.tenantId,
      t.displayName || "—",
      badge(t.status || "unknown", t.status === "active" ? "good" : ""),
      fmtTime(t.createdAtMs),
      fmtNum(t.keys),
      el("button", { class: "small", type: "button", "data-open-tenant": t.tenantId, onclick: () => selectTenant(t.tenantId) }, "open"),
    ]));
}

// Empties every view, so nothing of one tenant is on screen under another's name.
function clearViews() {
  for (const node of document.querySelectorAll("section[data-panel] table, #overview-body, #limits-body, #usage-chart, #metrics-tokens, #search-results, #chat-log, #history-list, #ingest-result, #new-key-secret, #config-result")) {
    node.replaceChildren();
  }
  $("#history").hidden = true;
  $("#new-key").hidden = true;
  state.historySession = null;
  state.assistant = null;
}

function selectTenant(id) {
  clearViews();
  // A key belongs to one tenant: the chat panel's goes with the old one.
  state.chatKey = null;
  $("#chat-key").value = "";
  state.tenant = id;
  sessionStorage.setItem("tp.tenant", id);
  state.documentsCursor = null;
  state.sessionsCursor = null;
  closeSocket();
  showApp();
}

function keyStatus(k) {
  if (k.revokedAtMs) return badge("revoked", "bad");
  if (k.expiresAtMs && k.expiresAtMs <= Date.now()) return badge("expired", "bad");
  return badge("active", "good");
}

const limitsText = (l) =>
  !l || Object.keys(l).length === 0 ? "tenant's" : Object.entries(l).map(([k, v]) => `${k} ${fmtNum(v)}`).join(", ");

async function renderKeys() {
  const listed = await attempt("listing keys", () => api("GET", "/admin/keys"));
  if (!listed) return;
  table("#keys-table",
    ["id", "name", "scopes", "status", "created", "last used", "limits", ""],
    listed.keys.map((k) => [
      el("code", {}, k.id),
      k.name,
      k.scopes.join(" "),
      keyStatus(k),
      fmtTime(k.createdAtMs),
      fmtTime(k.lastUsedAtMs),
      limitsText(k.limits),
      k.revokedAtMs ? "" : el("span", {},
        el("button", { class: "small", type: "button", "data-rotate": k.id, onclick: () => rotateKey(k.id) }, "rotate"), " ",
        el("button", { class: "small danger", type: "button", "data-revoke": k.id, onclick: () => revokeKey(k.id) }, "revoke")),
    ]));
}

function showSecret(reply) {
  $("#new-key-secret").textContent = reply.key;
  $("#new-key").hidden = false;
  if (reply.scopes.includes("chat") || reply.scopes.includes("search")) {
    state.chatKey = reply.key;
    $("#chat-key").value = reply.key;
  }
}

async function createKey(ev) {
  ev.preventDefault();
  const scopes = [...document.querySelectorAll("#key-scopes input:checked")].map((i) => i.value);
  const limits = {};
  for (const name of ["rpm", "tpm", "concurrency"]) {
    const v = $("#key-" + name).value;
    if (v) limits[name] = Number(v);
  }
  const body = { name: $("#key-name").value.trim(), scopes };
  if (Object.keys(limits).length) body.limits = limits;
  const reply = await attempt("creating the key", () => api("POST", "/admin/keys", body));
  if (!reply) return;
  showSecret(reply);
  await renderKeys();
}

async function rotateKey(id) {
  if (!confirm(`Rotate key ${id}? Its old secret stops working at once.`)) return;
  const reply = await attempt("rotating the key", () => api("POST", `/admin/keys/${id}/rotate`, {}));
  if (!reply) return;
  showSecret(reply);
  await renderKeys();
}

async function revokeKey(id) {
  if (!confirm(`Revoke key ${id}? Clients using it are refused within a second.`)) return;
  if (await attempt("revoking the key", () => api("DELETE", `/admin/keys/${id}`))) {
    if (state.chatKey && state.chatKey.includes(`_${id}_`)) {
      state.chatKey = null;
      $("#chat-key").value = "";
      closeSocket();
    }
    await renderKeys();
  }
}

function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

async function renderUsage() {
  if (!$("#usage-to").value) {
    const today = new Date();
    $("#usage-to").value = isoDay(today);
    $("#usage-from").value = isoDay(new Date(today.getTime() - 29 * 86400000));
  }
  const range = `from=${$("#usage-from").value}&to=${$("#usage-to").value}`;
  const [models, keys] = await attempt("loading usage", () => Promise.all(
    ["model", "key"].map((g) => api("GET", `/admin/usage?${range}&groupBy=${g}`)))) || [];
  if (!models) return;
  // Each model's days, for a chart stacked by model (the busiest first).
  const shown = [...models.rows].sort((a, b) => (b.inputTokens + b.outputTokens) - (a.inputTokens + a.outputTokens)).slice(0, CHART_COLORS.length);
  const series = await attempt("loading usage per model", () => Promise.all(shown.map((m) =>
    api("GET", `/admin/usage?${range}&groupBy=day&model=${encodeURIComponent(m.group)}`)
      .then((days) => ({ model: m.group, days: days.rows }))))) || [];
  drawUsageChart(series, models.from, models.to, models.rows.length - shown.length);
  const rowsOf = (reply) => reply.rows.map((r) => [r.group, fmtNum(r.requests), fmtNum(r.inputTokens), fmtNum(r.outputTokens), fmtCost(r.costMicros)]);
  const heads = (first) => [first, { label: "requests", n: true }, { label: "input tokens", n: true }, { label: "output tokens", n: true }, { label: "cost", n: true }];
  table("#usage-models", heads("model"), rowsOf(models));
  table("#usage-keys", heads("key"), rowsOf(keys));
}

const CHART_COLORS = ["#2f6fdf", "#e08a1e", "#1f8a4c", "#a23fb8", "#c4372c", "#178a8a", "#7a6a2a", "#5a5f66"];

// Tokens (input + output) per UTC day, one stacked bar segment per model, in SVG.
function drawUsageChart(series, from, to, hidden) {
  const days = [];
  for (let t = Date.parse(from + "T00:00:00Z"); t <= Date.parse(to + "T00:00:00Z"); t += 86400000) days.push(isoDay(new Date(t)));
  const perModel = series.map((s) => new Map(s.days.map((r) => [r.group, r])));
  const dayTotal = (d) => perModel.reduce((sum, m) => sum + (m.get(d) ? m.get(d).inputTokens + m.get(d).outputTokens : 0), 0);
  const max = Math.max(1, ...days.map(dayTotal));
  const W = 760, H = 200, pad = 28, bw = (W - pad) / Math.max(days.length, 1);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H + 20}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "tokens per day and model");
  const add = (parent, tag, attrs, text) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
    if (text !== undefined) n.textContent = text;
    parent.append(n);
    return n;
  };
  add(svg, "text", { x: 0, y: 10 }, fmtNum(max) + " tokens");
  days.forEach((d, i) => {
    const x = pad + i * bw + 1;
    let y = H;
    perModel.forEach((m, j) => {
      const r = m.get(d);
      if (!r) return;
      const h = ((r.inputTokens + r.outputTokens) / max) * (H - 20);
      y -= h;
      const rect = add(svg, "rect", { class: "bar", "data-model": series[j].model, x, y, width: Math.max(bw - 2, 1), height: h, fill: CHART_COLORS[j] });
      add(rect, "title", {}, `${d} · ${series[j].model}: ${fmtNum(r.inputTokens)} in, ${fmtNum(r.outputTokens)} out, ${r.requests} requests, ${fmtCost(r.costMicros)}`);
    });
    if (i % Math.ceil(days.length / 8) === 0) add(svg, "text", { x, y: H + 14 }, d.slice(5));
  });
  const legend = el("p", { class: "legend" }, series.map((s, j) => el("span", {},
    el("span", { class: "swatch", "data-color": j }), s.model, " ")));
  // Colours come from the palette by index (the CSP allows no inline style).
  legend.querySelectorAll(".swatch").forEach((sw) => sw.classList.add("c" + sw.dataset.color));
  const note = hidden > 0 ? ` (${hidden} less used model(s) not drawn; see the table)` : "";
  $("#usage-chart").replaceChildren(svg, legend, el("p", { class: "muted" }, "Tokens (input and output) per UTC day and model. Hover a bar for its figures." + note));
}

async function renderLimits() {
  const record = await attempt("loading limits", () => api("GET", "/admin/tenant"));
  if (!record) return;
  const s = record.tenant.settings || {};
  const ledger = await api("GET", `/admin/actors/limiter/${encodeURIComponent(state.tenant)}`).catch((e) => ({ error: e.message }));
  const keys = await api("GET", "/admin/keys").catch(() => ({ keys: [] }));
  const budgetText = (b) => (!b || Object.keys(b).length === 0 ? "none" : Object.entries(b).map(([k, v]) => `${k} ${fmtNum(v)}`).join(", "));
  const body = [
    el("h3", {}, "Tenant"),
    kv([["limits", limitsText(s.limits).replace("tenant's", "unlimited")], ["budget", budgetText(s.budget)]]),
    el("h3", {}, "Keys"),
  ];
  const t = el("table", {});
  table(t, ["key", "name", "limits", "budget"], keys.keys.filter((k) => !k.revokedAtMs).map((k) => [el("code", {}, k.id), k.name, limitsText(k.limits), budgetText(k.budget)]));
  body.push(t, el("h3", {}, "The tenant's ledger (windows, reservations in flight)"), el("pre", {}, JSON.stringify(ledger.state || ledger, null, 2)));
  $("#limits-body").replaceChildren(...body);
}

async function renderIngest() {
  await Promise.all([renderJobs(), renderDocuments(false)]);
}

async function renderJobs() {
  const inspected = await api("GET", `/admin/actors/ingest/${encodeURIComponent(state.tenant)}`).catch((e) => {
    setStatus("jobs: " + e.message, true);
    return null;
  });
  if (!inspected) return;
  const s = inspected.state || {};
  const jobs = [...(s.pendingJobs || []), ...(s.recentJobs || [])];
  table("#jobs-table",
    ["job", "status", { label: "documents", n: true }, { label: "chunks", n: true }, { label: "attempts", n: true }, "last error", "updated"],
    jobs.map((j) => [
      el("code", {}, j.jobId),
      badge(j.status, j.status === "done" ? "good" : j.status === "failed" ? "bad" : "warn"),
      `${fmtNum(j.documentsDone)} / ${fmtNum(j.documentsTotal)}`,
      fmtNum(j.chunksDone),
      fmtNum(j.attempts),
      j.lastError || "",
      fmtTime(j.updatedAtMs),
    ]));
}

async function renderDocuments(more) {
  const cursor = more && state.documentsCursor ? `&cursor=${encodeURIComponent(state.documentsCursor)}` : "";
  const listed = await api("GET", `/admin/documents?limit=50${cursor}`).catch((e) => {
    setStatus("documents: " + e.message, true);
    return null;
  });
  if (!listed) return;
  const t = $("#documents-table");
  const rows = listed.documents.map((d) => [
    el("code", {}, d.id),
    d.title || "",
    fmtNum(d.chunks),
    fmtTime(d.updatedAtMs),
    el("button", { class: "small danger", type: "button", "data-delete-doc": d.id, onclick: () => deleteDocument(d.id) }, "delete"),
  ]);
  const heads = ["document", "title", { label: "chunks", n: true }, "updated", ""];
  if (more) {
    const body = t.querySelector("tbody");
    for (const cells of rows) body.append(el("tr", {}, cells.map((c, i) => el("td", { class: heads[i].n ? "n" : null }, c))));
  } else {
    table(t, heads, rows);
  }
  state.documentsCursor = listed.nextCursor || null;
  $("#documents-more").hidden = !state.documentsCursor;
}

async function deleteDocument(id) {
  if (!confirm(`Delete document ${id} and its chunks?`)) return;
  if (await attempt("deleting the document", () => api("DELETE", `/api/documents/${encodeURIComponent(id)}`))) await renderIngest();
}

async function ingest(ev) {
  ev.preventDefault();
  const doc = { id: $("#ingest-id").value.trim(), text: $("#ingest-text").value };
  const title = $("#ingest-title").value.trim();
  if (title) doc.metadata = { title };
  const reply = await attempt("ingesting", () => api("POST", "/api/ingest", { documents: [doc] }));
  if (!reply) return;
  const out = $("#ingest-result");
  out.replaceChildren("job ", el("code", {}, reply.jobId), " ", el("span", { id: "ingest-status" }, reply.status));
  // Follow the job until it ends, then refresh the lists.
  let status = reply.status;
  for (let i = 0; i < 120 && status !== "done" && status !== "failed"; i++) {
    await new Promise((r) => setTimeout(r, 500));
    const job = await api("GET", `/api/ingest/${reply.jobId}`).catch(() => null);
    if (job) {
      status = job.status;
      $("#ingest-status").textContent = `${job.status} (${job.documentsDone}/${job.documentsTotal} documents${job.lastError ? ", " + job.lastError : ""})`;
    }
  }
  await renderIngest();
}

async function renderSessions(more) {
  const cursor = more === true && state.sessionsCursor ? `&cursor=${encodeURIComponent(state.sessionsCursor)}` : "";
  const listed = await attempt("listing sessions", () => api("GET", `/admin/sessions?limit=50${cursor}`));
  if (!listed) return;
  const heads = ["session", { label: "messages", n: true }, "last activity", "key", "user", ""];
  const rows = listed.sessions.map((s) => [
    el("code", {}, s.sessionId),
    fmtNum(s.messageCount),
    fmtTime(s.lastActivityMs),
    s.keyId || "—",
    s.userId || "—",
    el("button", { class: "small", type: "button", "data-open-session": s.sessionId, onclick: () => openHistory(s.sessionId) }, "read"),
  ]);
  if (more === true) {
    const body = $("#sessions-table").querySelector("tbody");
    for (const cells of rows) body.append(el("tr", {}, cells.map((c, i) => el("td", { class: heads[i].n ? "n" : null }, c))));
  } else {
    table("#sessions-table", heads, rows);
  }
  state.sessionsCursor = listed.nextCursor || null;
  $("#sessions-more").hidden = !state.sessionsCursor;
}

function messageItem(m) {
  const content = typeof m.content === "string" ? m.content : JSON.stringify(m.content);
  const meta = [m.role, "#" + m.seq, fmtTime(m.createdAtMs)];
  if (m.turn) meta.push("turn " + m.turn.status + (m.turn.error ? ": " + m.turn.error.code : ""));
  if (m.toolCalls && m.toolCalls.length) meta.push("calls " + m.toolCalls.map((c) => c.name || c.tool).join(", "));
  return el("li", { class: m.role }, content, el("span", { class: "meta" }, meta.join(" · ")));
}

async function openHistory(id) {
  const history = await attempt("reading the history", () => api("GET", `/api/sessions/${encodeURIComponent(id)}/history?limit=200`));
  if (!history) return;
  state.historySession = id;
  $("#history").hidden = false;
  $("#history-title").textContent = `Session ${id}`;
  $("#history-list").replaceChildren(...history.messages.map(messageItem));
}

async function eraseSession() {
  const id = state.historySession;
  if (!id || !confirm(`Erase every message of session ${id}?`)) return;
  if (await attempt("erasing the session", () => api("DELETE", `/api/sessions/${encodeURIComponent(id)}`))) {
    $("#history").hidden = true;
    state.historySession = null;
    await renderSessions(false);
  }
}

async function search(ev) {
  ev.preventDefault();
  const body = { query: $("#search-query").value, mode: $("#search-mode").value, topK: 10 };
  // A search key made in this tab is used if the signed-in token cannot search.
  const run = () => api("POST", "/api/search", body).catch((e) => {
    if (e.status === 403 && state.chatKey) return api("POST", "/api/search", body, state.chatKey);
    throw e;
  });
  const reply = await attempt("searching", run);
  if (!reply) return;
  const list = $("#search-results");
  if (reply.matches.length === 0) {
    list.replaceChildren(el("li", { class: "muted" }, `No match at or above the floor (${reply.minScore ?? "none"}).`));
    return;
  }
  list.replaceChildren(...reply.matches.map((m) => el("li", { class: "match" },
    el("strong", {}, m.docId || m.id), " ", badge("score " + Number(m.score).toFixed(3)), " ",
    el("span", { class: "muted" }, "chunk " + m.chunk), "\n", m.text)));
}

// ---- chat over the WebSocket route ----------------------------------------------

function closeSocket() {
  if (state.socket) {
    state.socket.onclose = null;
    state.socket.close();
  }
  state.socket = null;
  state.socketUrl = null;
}

function chatLine(cls, text) {
  const li = el("li", { class: cls }, text);
  $("#chat-log").append(li);
  li.scrollIntoView({ block: "nearest" });
  return li;
}

function openSocket() {
  const key = $("#chat-key").value.trim();
  const session = $("#chat-session").value.trim();
  if (!key) throw new Error("a key with the chat scope is needed: create one in Keys");
  const params = new URLSearchParams({ sessionId: session, key });
  if (state.tenant) params.set("tenant", state.tenant);
  const url = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/api/chat/ws?${params}`;
  if (state.socket && state.socketUrl === url && state.socket.readyState <= 1) return Promise.resolve(state.socket);
  closeSocket();
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    state.socket = ws;
    state.socketUrl = url;
    ws.onopen = () => resolve(ws);
    ws.onerror = () => reject(new Error("the WebSocket could not connect (is the key valid, with the chat scope?)"));
    ws.onclose = (e) => {
      if (state.socket === ws) state.socket = null;
      if (e.code !== 1000) chatLine("tool", `socket closed (${e.code}${e.reason ? ": " + e.reason : ""})`);
    };
    ws.onmessage = (msg) => onChatEvent(JSON.parse(msg.data));
  });
}

function onChatEvent(ev) {
  switch (ev.type) {
    case "message":
      if (!state.assistant) state.assistant = chatLine("assistant", "");
      state.assistant.append(document.createTextNode(ev.content));
      break;
    case "tool_call":
      chatLine("tool", `→ ${ev.tool}(${ev.arguments})`);
      break;
    case "tool_result": {
      const matches = ev.result && Array.isArray(ev.result.matches) ? ev.result.matches : null;
      const text = matches
        ? `← ${ev.tool}: ${matches.length} passage(s): ${matches.map((m) => `${m.docId || m.id} (chunk ${m.chunk}, score ${Number(m.score).toFixed(2)})`).join("; ")}`
        : `← ${ev.tool}: ${JSON.stringify(ev.result)}`;
      chatLine("tool" + (ev.isError ? " error" : ""), text);
      break;
    }
    case "done": {
      const li = state.assistant || chatLine("assistant", "");
      const u = ev.usage || {};
      li.append(el("span", { class: "meta", "data-done": "1" },
        `done · ${ev.model || ""} · ${fmtNum(u.inputTokens)} in / ${fmtNum(u.outputTokens)} out${u.costMicros !== undefined ? " · " + fmtCost(u.costMicros) : ""}`));
      state.assistant = null;
      $("#chat-send").disabled = false;
      break;
    }
    case "error":
      chatLine("tool error", `error ${ev.code}: ${ev.message || ""}`);
      state.assistant = null;
      $("#chat-send").disabled = false;
      break;
    default:
      break;
  }
}

async function sendChat(ev) {
  ev.preventDefault();
  const content = $("#chat-input").value.trim();
  if (!content) return;
  try {
    const ws = await openSocket();
    chatLine("user", content);
    state.assistant = null;
    $("#chat-send").disabled = true;
    ws.send(JSON.stringify({ type: "message", content }));
    $("#chat-input").value = "";
    setStatus("");
  } catch (e) {
    setStatus("chat: " + e.message, true);
  }
}

async function renderMetrics() {
  const reply = await attempt("loading metrics", () => api("GET", "/admin/metrics"));
  if (!reply) return;
  const w = (reply.windows || {})[$("#metrics-window").value] || { routes: [], tokens: {} };
  const tokens = w.tokens || {};
  $("#metrics-tokens").replaceChildren(kv([
    ["input tokens", fmtNum(tokens.inputTokens)],
    ["output tokens", fmtNum(tokens.outputTokens)],
    ["cost", fmtCost(tokens.costMicros)],
  ]));
  table("#metrics-table",
    ["route", { label: "requests", n: true }, { label: "errors", n: true }, "by status", { label: "p50 ms", n: true }, { label: "p99 ms", n: true }],
    (w.routes || []).map((r) => [
      r.route,
      fmtNum(r.requests),
      fmtNum(r.errors),
      Object.entries(r.byStatus || {}).map(([k, v]) => `${k}×${v}`).join(" "),
      r.p50Ms === null || r.p50Ms === undefined ? "—" : Number(r.p50Ms).toFixed(1),
      r.p99Ms === null || r.p99Ms === undefined ? "—" : Number(r.p99Ms).toFixed(1),
    ]));
}

async function config(method) {
  const name = $("#config-name").value.trim();
  if (!$("#config-name").checkValidity()) {
    setStatus("a name is 1–200 characters of A-Z a-z 0-9 : . _ -", true);
    return;
  }
  const path = `/admin/config/${encodeURIComponent(name)}`;
  const reply = await attempt(method === "GET" ? "reading" : method === "PUT" ? "setting" : "deleting",
    () => api(method, path, method === "PUT" ? { value: $("#config-value").value } : undefined));
  if (reply) $("#config-result").textContent = JSON.stringify(reply, null, 2);
}

// ---- wiring -------------------------------------------------------------------

function start() {
  // A bug in this script shows in the status line rather than silently.
  window.addEventListener("error", (e) => setStatus("dashboard error: " + e.message, true));
  window.addEventListener("unhandledrejection", (e) => setStatus("dashboard error: " + (e.reason && e.reason.message), true));
  $("#login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("#login-error").textContent = "";
    try {
      await signIn($("#login-token").value.trim(), $("#login-tenant").value.trim());
      $("#login-token").value = "";
      showApp();
    } catch (e) {
      state.token = null;
      $("#login-error").textContent = "Sign-in failed: " + e.message;
    }
  });
  $("#logout-btn").addEventListener("click", signOut);
  $("#tenant-select").addEventListener("change", (ev) => selectTenant(ev.target.value));
  $("#nav").addEventListener("click", (ev) => {
    if (ev.target.dataset && ev.target.dataset.view) show(ev.target.dataset.view);
  });
  $("#key-form").addEventListener("submit", createKey);
  $("#usage-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    renderUsage();
  });
  $("#ingest-form").addEventListener("submit", ingest);
  $("#documents-more").addEventListener("click", () => renderDocuments(true));
  $("#sessions-more").addEventListener("click", () => renderSessions(true));
  $("#history-erase").addEventListener("click", eraseSession);
  $("#search-form").addEventListener("submit", search);
  $("#chat-form").addEventListener("submit", sendChat);
  $("#metrics-window").addEventListener("change", renderMetrics);
  $("#config-get").addEventListener("click", () => config("GET"));
  $("#config-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    config("PUT");
  });
  $("#config-delete").addEventListener("click", () => config("DELETE"));

  // A token in the URL's fragment (never sent to the server) signs in once,
  // then leaves the address bar.
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get("token") || sessionStorage.getItem("tp.token");
  const tenant = fragment.get("tenant") || sessionStorage.getItem("tp.tenant") || "";
  if (fragment.has("token")) history.replaceState(null, "", location.pathname + location.search);
  if (token) {
    signIn(token, tenant).then(showApp, (e) => {
      sessionStorage.removeItem("tp.token");
      $("#login-error").textContent = "Sign-in failed: " + e.message;
    });
  }
}

start();
