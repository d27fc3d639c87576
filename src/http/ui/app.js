// chaperone's status page: the process table, live from GET /events, and a
// page per process. No build step and no dependencies: the agent serves this
// file as it is. Text from processes (ids, argv, output) is only ever set as
// text content, never parsed as HTML.
"use strict";

const ROW = 28;                 // px, as --row in app.css
const TAIL = 64 * 1024;         // bytes of a capture shown when a page opens
const HEAD = 16 * 1024;         // bytes of a dropped capture's head shown
const KEEP = 512 * 1024;        // characters a tail keeps before trimming its top
const BLOCK = 4 * 1024;         // characters of a tail laid out as one block
const SHOW = 4 * 1024 * 1024;   // bytes a head/tail capture's held parts may be to load on a click
const DRAW = 250;               // ms between draws of a followed tail, at least
const TOKEN_KEY = "chaperone-token";

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "text") e.textContent = v;
    else if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of kids) if (c != null) e.append(c);
  return e;
};

// ---------------------------------------------------------------- formatting

function bytes(n) {
  if (n == null) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0, v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? String(v) : v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)) + " " + units[i];
}

function seconds(s) {
  if (s == null) return "";
  if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 0) + " ms";
  if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + " s";
  const m = Math.floor(s / 60), h = Math.floor(m / 60), d = Math.floor(h / 24);
  if (d > 0) return `${d}d ${h % 24}h`;
  if (h > 0) return `${h}h ${m % 60}m`;
  return `${m}m ${Math.floor(s % 60)}s`;
}

function clock(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}

function exitText(r) {
  if (r.signal) return r.signal;
  if (r.exit_code != null) return "exit " + r.exit_code;
  return "";
}

function shortArgv(argv) {
  const s = (argv || []).join(" ");
  return s.length > 120 ? s.slice(0, 117) + "…" : s;
}

function outputText(r) {
  return (r.fds || []).map(f => `${f.name} ${f.length == null ? "file" : bytes(f.length)}`).join(", ");
}

// ---------------------------------------------------------------- the API

let token = sessionStorage.getItem(TOKEN_KEY);

class Unauthorized extends Error {}

async function api(path, opts = {}) {
  const headers = new Headers(opts.headers || {});
  if (token) headers.set("Authorization", "Bearer " + token);
  const r = await fetch(path, { ...opts, headers, cache: "no-store" });
  if (r.status === 401) { askToken(); throw new Unauthorized("the token is missing or wrong"); }
  return r;
}

class HttpError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

// The answer's data; with `text`, also the body as it came, for what must be
// shown exactly (JavaScript numbers lose integers past 2^53).
async function apiJson(path, opts, text = false) {
  const r = await api(path, opts);
  let body = null, src = "";
  try { src = await r.text(); body = JSON.parse(src); } catch (e) {
    if (e.name === "AbortError") throw e;   /* else not JSON */
  }
  if (!r.ok) {
    const why = body && body.errors && (body.errors.detail || body.errors.status);
    throw new HttpError(why || `${r.status} ${r.statusText}`, r.status);
  }
  return text ? { data: body && body.data, text: src } : body && body.data;
}

// JSON re-indented as JSON.stringify(…, null, 2) would, but from its text:
// numbers (an rlimit of 2^64 - 1, say) are shown as they came. `path` picks
// a value out (keys of nested objects). Null if the text is not JSON.
function exactJson(src, path = []) {
  let i = 0;
  const STR = /"(?:[^"\\]|\\.)*"/y, ATOM = /-?[0-9][0-9.eE+-]*|true|false|null/y;
  const ws = () => { while (i < src.length && " \t\n\r".includes(src[i])) i++; };
  const tok = re => {
    re.lastIndex = i;
    const m = re.exec(src);
    if (!m) throw new SyntaxError("not JSON at " + i);
    i = re.lastIndex;
    return m[0];
  };
  // Objects as Maps, which keep their keys' order (a plain object puts
  // integer-like keys first); other values as their text.
  function value() {
    ws();
    const c = src[i];
    if (c === "{" || c === "[") {
      i++;
      const obj = c === "{", out = obj ? new Map() : [];
      ws();
      if (src[i] === (obj ? "}" : "]")) { i++; return out; }
      for (;;) {
        ws();
        if (obj) { const k = JSON.parse(tok(STR)); ws(); if (src[i++] !== ":") throw new SyntaxError("no :"); out.set(k, value()); }
        else out.push(value());
        ws();
        const d = src[i++];
        if (d === (obj ? "}" : "]")) return out;
        if (d !== ",") throw new SyntaxError("not JSON at " + i);
      }
    }
    return { text: c === '"' ? tok(STR) : tok(ATOM) };
  }
  function show(v, ind) {
    const in2 = ind + "  ";
    if (v instanceof Map) {
      return v.size ? "{\n" + [...v].map(([k, x]) => in2 + JSON.stringify(k) + ": " + show(x, in2)).join(",\n") + "\n" + ind + "}" : "{}";
    }
    if (Array.isArray(v)) return v.length ? "[\n" + v.map(x => in2 + show(x, in2)).join(",\n") + "\n" + ind + "]" : "[]";
    return v.text;
  }
  try {
    let v = value();
    for (const k of path) { if (!(v instanceof Map) || !v.has(k)) return null; v = v.get(k); }
    return show(v, "");
  } catch (_) {
    return null;
  }
}

// ---------------------------------------------------------------- login

let loginWaiters = [];

function askToken(message) {
  $("#login").hidden = false;
  $("#login-error").textContent = message || (token ? "That token was refused." : "");
  $("#token").focus();
  return new Promise(res => loginWaiters.push(res));
}

function login() {
  const t = $("#token").value.trim();
  if (!t) return;
  token = t;
  sessionStorage.setItem(TOKEN_KEY, t);
  $("#login").hidden = true;
  $("#logout").hidden = false;
  const w = loginWaiters; loginWaiters = [];
  w.forEach(f => f());
  restartEvents();
  route();
}

function logout() {
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  $("#logout").hidden = true;
  restartEvents();
}

// ---------------------------------------------------------------- confirm & toast

function confirmAction(text, ok = "OK") {
  const box = $("#confirm");
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = ok;
  box.hidden = false;
  $("#confirm-cancel").focus();
  return new Promise(res => {
    const done = v => () => { box.hidden = true; $("#confirm-ok").onclick = $("#confirm-cancel").onclick = null; res(v); };
    $("#confirm-ok").onclick = done(true);
    $("#confirm-cancel").onclick = done(false);
  });
}

let toastTimer = 0;
function toast(text, bad = false) {
  const t = $("#toast");
  t.textContent = text;
  t.style.background = bad ? "#b3261e" : "#333";
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, 4000);
}

async function act(what, confirmText, okText, path, method = "POST") {
  if (!await confirmAction(confirmText, okText)) return false;
  try {
    await apiJson(path, { method });
    toast(what);
    return true;
  } catch (e) {
    toast(`${what} failed: ${e.message}`, true);
    return false;
  }
}

// ---------------------------------------------------------------- live state

const procs = new Map();       // id → row, with _at: when it was received (ms)
let agent = null;
let agentAt = 0;
let generation = 0;            // of the last snapshot
let listeners = new Set();     // called with the ids that changed (null: all)

function changed(ids) { for (const f of listeners) f(ids); }

function take(event, data) {
  const now = performance.now();
  if (event === "snapshot") {
    procs.clear();
    for (const r of data.procs) { r._at = now; procs.set(r.id, r); }
    generation = data.generation;
    setAgent(data.agent);
    changed(null);
    if (!performance.getEntriesByName("chaperone-snapshot").length) performance.mark("chaperone-snapshot");
  } else if (event === "procs") {
    if (data.generation <= generation) return;
    const ids = [];
    for (const id of data.gone || []) { procs.delete(id); ids.push(id); }
    for (const r of data.procs) {
      // Rows of running processes come without their argv, which is known.
      if (!r.argv) r.argv = (procs.get(r.id) || {}).argv;
      r._at = now;
      procs.set(r.id, r);
      ids.push(r.id);
    }
    changed(ids);
  } else if (event === "agent") {
    setAgent(data);
  }
}

let events = null;             // the AbortController of the stream

function restartEvents() {
  if (events) events.abort();
  events = new AbortController();
  runEvents(events.signal);
}

async function runEvents(signal) {
  let backoff = 500;
  while (!signal.aborted) {
    try {
      const r = await api("/events", { signal });
      if (!r.ok) throw new Error(`${r.status}`);
      setLive(true);
      backoff = 500;
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "", scan = 0;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let end;
        // Looked for from where the last look stopped: a large snapshot
        // comes in many chunks.
        while ((end = buf.indexOf("\n\n", scan)) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          scan = 0;
          let name = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) name = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (data) take(name, JSON.parse(data));
        }
        scan = Math.max(0, buf.length - 1);
      }
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof Unauthorized) { setLive(false, "needs token"); return; }
    }
    setLive(false);
    await new Promise(res => setTimeout(res, backoff));
    backoff = Math.min(backoff * 2, 10000);
  }
}

function setLive(up, why) {
  const p = $("#live");
  p.textContent = up ? "live" : (why || "reconnecting");
  p.className = "pill " + (up ? "live" : "down");
}

// ---------------------------------------------------------------- the agent panel

function setAgent(a) {
  agent = a;
  agentAt = performance.now();
  renderAgent();
}

function renderAgent() {
  const a = agent;
  if (!a) return;
  const p = a.proc || {};
  $("#host").textContent = `${p.username || ""}@${p.hostname || ""}`;
  const c = a.counts || {};
  const up = a.uptime + (performance.now() - agentAt) / 1000;
  const b = a.backend || {};
  const backend = b.name ? `${b.name}${b.name !== "io_uring" || (b.waitid && b.read_multishot) ? "" : " (fallback paths)"}` : "";
  const conn = a.connection;
  const facts = [
    ["host", p.hostname], ["pid", p.pid], ["user", p.username], ["version", a.version],
    ["uptime", seconds(up)], ["backend", backend], ["shutdown", a.shutdown_state],
    ["agent link", conn ? `${conn.state} ${conn.url}` : "none"],
    ["running", (c.running || 0) + (c.queued ? ` (+${c.queued} queued)` : "")],
    ["exited", c.terminated || 0], ["errors", c.error || 0],
    ["output held", a.output && a.output.held != null
      ? `${bytes(a.output.held)} of ${bytes(a.output.limit)}` : "no limit"],
  ];
  const dl = $("#agent-facts");
  dl.replaceChildren(...facts.map(([k, v]) =>
    el("div", { "data-fact": k }, el("dt", { text: k }), el("dd", { text: v == null ? "" : String(v) }))));
  $("#logout").hidden = !token;
}

// ---------------------------------------------------------------- the table

const COLUMNS = [
  { key: "id", title: "id", get: r => r.id },
  { key: "state", title: "state", get: r => r.phase },
  { key: "pid", title: "pid", get: r => r.pid, num: true },
  { key: "argv", title: "argv", get: r => (r.argv || []).join(" ") },
  { key: "start", title: "start", get: r => r.start },
  { key: "elapsed", title: "elapsed", get: (r, now) => elapsed(r, now), num: true },
  { key: "exit", title: "exit", get: r => exitText(r) },
  { key: "cpu", title: "CPU", get: r => r.cpu, num: true },
  { key: "rss", title: "peak RSS", get: r => r.rss, num: true },
  { key: "output", title: "output", get: r => (r.fds || []).reduce((s, f) => s + (f.length || 0), 0), num: true },
];

function elapsed(r, now = performance.now()) {
  return r.phase === "running" ? r.elapsed + (now - r._at) / 1000 : r.elapsed;
}

const table = {
  sort: { key: "id", dir: 1 },
  filter: { state: "", text: "" },
  view: [],
  dirty: true,
  root: null,
};

function tableView() {
  const root = el("div", { class: "tableview" });
  const toolbar = el("div", { class: "toolbar" },
    el("label", {}, "state ",
      el("select", { id: "filter-state", onchange: e => { table.filter.state = e.target.value; table.dirty = true; schedule(); } },
        ...["", "running", "queued", "opening", "terminated", "error", "failed"].map(s =>
          el("option", { value: s, text: s === "" ? "all" : s === "failed" ? "exit ≠ 0" : s })))),
    el("input", { id: "filter-id", type: "search", placeholder: "filter by id or argv", size: 30,
      oninput: e => { table.filter.text = e.target.value; table.dirty = true; schedule(); } }),
    el("span", { id: "count", class: "muted" }));
  $("#filter-state", toolbar).value = table.filter.state;
  $("#filter-id", toolbar).value = table.filter.text;
  const head = el("div", { class: "thead grid" }, ...COLUMNS.map(c =>
    el("span", { "data-key": c.key, class: c.num ? "num" : "", text: c.title, onclick: () => sortBy(c.key) })));
  const rows = el("div", { class: "rows" });
  const scroller = el("div", { class: "scroller", onscroll: schedule }, rows);
  root.append(toolbar, head, scroller, el("div", { id: "empty", class: "empty", hidden: true }));
  table.root = { root, head, rows, scroller, pool: [] };
  table.dirty = true;
  return root;
}

function sortBy(key) {
  table.sort = table.sort.key === key ? { key, dir: -table.sort.dir } : { key, dir: 1 };
  table.dirty = true;
  schedule();
}

function matches(r) {
  const f = table.filter;
  if (f.state === "failed" ? !(r.signal || (r.exit_code != null && r.exit_code !== 0) || r.phase === "error")
      : f.state && r.phase !== f.state) return false;
  if (f.text) {
    const t = f.text.toLowerCase();
    if (!r.id.toLowerCase().includes(t) && !(r.argv || []).join(" ").toLowerCase().includes(t)) return false;
  }
  return true;
}

function buildView() {
  const col = COLUMNS.find(c => c.key === table.sort.key) || COLUMNS[0];
  const dir = table.sort.dir;
  const now = performance.now();
  // Each row's key once, not once a comparison.
  const v = [];
  for (const r of procs.values()) if (matches(r)) v.push([col.get(r, now), r]);
  v.sort(([x, a], [y, b]) => {
    if (x === y) return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
    if (x == null) return 1;
    if (y == null) return -1;
    return (x < y ? -1 : 1) * dir;
  });
  table.view = v.map(e => e[1]);
  table.dirty = false;
}

function renderTable() {
  const t = table.root;
  if (!t || !t.root.isConnected) return;
  if (table.dirty) buildView();
  const n = table.view.length;
  $("#count").textContent = `${n} of ${procs.size} processes`;
  // For ci/status-bench: when the first rows were drawn.
  if (n && !performance.getEntriesByName("chaperone-rendered").length) performance.mark("chaperone-rendered");
  const empty = $("#empty");
  empty.hidden = n > 0;
  empty.textContent = procs.size ? "No process matches the filter." : "No processes yet.";
  for (const s of t.head.children) s.dataset.dir = s.dataset.key === table.sort.key ? table.sort.dir : "";
  t.rows.style.height = n * ROW + "px";
  const top = t.scroller.scrollTop, height = t.scroller.clientHeight || 600;
  const first = Math.max(0, Math.floor(top / ROW) - 10);
  const last = Math.min(n, Math.ceil((top + height) / ROW) + 10);
  while (t.pool.length < last - first) {
    const row = el("div", { class: "row grid" }, ...COLUMNS.map(c => el("span", { class: `${c.key}${c.num ? " num" : ""}` })));
    row.children[0].append(el("a"));
    t.rows.append(row);
    t.pool.push(row);
  }
  t.pool.forEach((row, i) => {
    const r = table.view[first + i];
    row.hidden = !r;
    if (!r) return;
    row.style.top = (first + i) * ROW + "px";
    row.dataset.id = r.id;
    const [id, state, pid, argv, start, el_, exit, cpu, rss, out] = row.children;
    const a = id.firstChild;
    a.textContent = r.id;
    a.href = "#/proc/" + encodeURIComponent(r.id);
    a.title = r.id;
    state.textContent = r.phase;
    state.className = "state " + r.phase;
    state.title = r.error || "";
    pid.textContent = r.pid == null ? "" : r.pid;
    argv.textContent = shortArgv(r.argv);
    argv.title = (r.argv || []).join(" ");
    start.textContent = clock(r.start);
    start.title = r.start;
    el_.textContent = seconds(elapsed(r));
    exit.textContent = exitText(r);
    exit.className = "exit" + ((r.signal || r.exit_code) ? " bad" : "");
    cpu.textContent = r.cpu == null ? "" : seconds(r.cpu);
    rss.textContent = bytes(r.rss);
    out.textContent = outputText(r);
  });
}

// ---------------------------------------------------------------- a process's page

let page = null;               // the open process page's state

function procView(id) {
  const root = el("div", { class: "page" });
  const p = page = {
    id, root, result: null, samples: [], aborts: [], tails: new Map(), fetching: false, again: false,
    title: el("h1", {}, el("span", { class: "mono", text: id }), el("span", { class: "state", id: "proc-state" })),
    actions: el("div", { class: "actions" },
      ...["TERM", "INT", "KILL"].map(sig => el("button", {
        type: "button", "data-signal": sig, class: sig === "KILL" ? "danger" : "",
        onclick: () => act(`SIG${sig} sent to ${id}`, `Send SIG${sig} to ${id}?`, `Send SIG${sig}`,
          `/procs/${encodeURIComponent(id)}/signals/${sig}`),
        text: "SIG" + sig,
      })),
      el("button", { type: "button", id: "delete", onclick: async () => {
        if (await act(`${id} deleted`, `Delete ${id} and its output?`, "Delete",
            `/procs/${encodeURIComponent(id)}`, "DELETE")) location.hash = "#/";
      }, text: "Delete" })),
    notice: el("p", { class: "notice", id: "proc-notice", hidden: true }),
    facts: el("dl", { class: "facts" }),
    chart: el("div", { class: "card chart" }),
    perf: el("div", { class: "card" }),
    outputs: el("div", { class: "outputs" }),
    json: el("pre", { class: "json" }),
  };
  root.append(el("p", {}, el("a", { href: "#/", text: "← all processes" })), p.title, p.actions, p.notice, p.facts,
    p.chart, p.perf, p.outputs,
    el("details", { class: "card" }, el("summary", { text: "Result (JSON)" }), p.json));
  refreshProc(p);
  return root;
}

async function refreshProc(p) {
  if (p.fetching) { p.again = true; return; }
  p.fetching = true;
  try {
    const enc = encodeURIComponent(p.id);
    const [d, s] = await Promise.all([apiJson(`/procs/${enc}`, {}, true), apiJson(`/procs/${enc}/samples`)]);
    if (page !== p) return;
    p.result = d.data.procs[p.id];
    p.resultText = exactJson(d.text, ["data", "procs", p.id]);
    p.samples = s.samples;
    renderProc(p);
  } catch (e) {
    if (page === p && !(e instanceof Unauthorized)) {
      if (e.status === 404) procGone(p);
      else p.facts.replaceChildren(el("dt", { text: "error" }), el("dd", { class: "error", text: e.message }));
    }
  } finally {
    p.fetching = false;
    if (p.again && page === p) { p.again = false; setTimeout(() => refreshProc(p), 250); }
  }
}

// Which process a page shows: an id can name another one later (deleted and
// started again, or the agent restarted), which has another start and pid.
function procKey(r) { return { start: r.times.start || null, pid: r.pid == null ? null : r.pid }; }
// A process not started yet (no pid) has its queueing time as its start,
// which its launch replaces: only started processes' starts are compared.
function sameProc(k, r) {
  const n = procKey(r);
  const started = k.pid != null && n.pid != null;
  return !(started && ((k.start && n.start && k.start !== n.start) || k.pid !== n.pid));
}
function agentKey(a) { return a && a.proc ? `${a.proc.pid} ${a.started}` : null; }

// The process is another one now: the output shown so far was the old
// one's, so its tails start again.
function resetOutputs(p, why) {
  for (const t of p.tails.values()) t.stop(true);
  p.tails = new Map();
  p.tabs = null;
  p.active = null;
  p.outputs.replaceChildren();
  p.key = null;
  if (why) { p.notice.textContent = why; p.notice.hidden = false; }
}

// GET /procs/ID said 404: deleted while the page was open, or never here.
function procGone(p) {
  const st = $("#proc-state", p.root);
  st.textContent = p.result ? "deleted" : "unknown";
  st.className = "state gone";
  for (const b of p.actions.querySelectorAll("button")) b.disabled = true;
  p.notice.textContent = p.result
    ? `${p.id} was deleted: the agent no longer has it. Below is how it was when last seen.`
    : `The agent has no process ${p.id} (it may have been deleted).`;
  p.notice.hidden = false;
  p.gone = p.result ? "deleted" : "unknown";
  for (const t of p.tails.values()) t.stop(true, "deleted");
}

function renderProc(p) {
  const r = p.result, row = procs.get(p.id) || {};
  if (p.gone) {
    // The id is (back) here: another process.
    const was = p.gone;
    p.gone = false;
    p.notice.hidden = true;
    resetOutputs(p, was === "deleted" ? `${p.id} was deleted and started again: this is the new process.` : "");
  } else if (p.key && !sameProc(p.key, r)) {
    resetOutputs(p, `${p.id} is another process now (started again, or the agent restarted): this is the new one.`);
  }
  if (!p.key || p.key.start == null || p.key.pid == null) p.key = procKey(r);
  const st = $("#proc-state", p.root);
  const phase = row.phase || r.state;
  st.textContent = phase;
  st.className = "state " + phase;
  // A process not yet started (queued, or opening its files) is cancelled
  // by a signal that would end it; one opening its files can be deleted,
  // a queued one cannot (docs/spec.md, --max-running; docs/http.md).
  const unstarted = phase === "queued" || phase === "opening" || (r.state === "running" && r.pid == null);
  const running = r.state === "running" && !r.status;
  for (const b of p.actions.querySelectorAll("[data-signal]")) b.disabled = !(running || unstarted);
  $("#delete", p.actions).disabled = r.state === "running" && phase !== "opening";
  const st_ = r.status || {};
  const ru = r.rusage;
  const facts = [
    ["argv", (row.argv || []).join(" ")],
    ["pid", r.pid],
    ["state", r.state + (r.errors.length ? ": " + r.errors.join("; ") : "")],
    ["exit", st_.signal ? `killed by ${st_.signal}${st_.core_dump ? " (core dumped)" : ""}`
      : st_.exit_code != null ? `exit code ${st_.exit_code}` : "not yet"],
    ["start", r.times.start],
    ["stop", r.times.stop || ""],
    ["elapsed", seconds(r.times.elapsed)],
    ["CPU", ru ? `${seconds(ru.utime)} user, ${seconds(ru.stime)} system`
      : r.proc_stat ? `${seconds(r.proc_stat.utime)} user, ${seconds(r.proc_stat.stime)} system (sampled)` : ""],
    ["peak RSS", ru ? bytes(ru.maxrss) : r.statm_samples ? bytes(r.statm_samples.peak_resident) + " (sampled)" : ""],
    ["faults", ru ? `${ru.minflt} minor, ${ru.majflt} major` : ""],
    ["context switches", ru ? `${ru.nvcsw} voluntary, ${ru.nivcsw} involuntary` : ""],
    ["I/O", r.proc_io ? `${bytes(r.proc_io.rchar)} read, ${bytes(r.proc_io.wchar)} written` : ""],
    ["cwd", r.cwd || ""],
  ];
  if (r.timeout) facts.push(["timeout", `${r.timeout.signal} after ${seconds(r.timeout.after)}${r.timeout.fired ? " (fired)" : ""}`]);
  p.facts.replaceChildren(...facts.flatMap(([k, v]) =>
    [el("dt", { text: k }), el("dd", { "data-fact": k, text: v == null ? "" : String(v) })]));
  renderChart(p);
  renderPerf(p);
  renderOutputs(p, row);
  p.json.textContent = p.resultText || JSON.stringify(r, null, 2);
}

function renderChart(p) {
  const s = p.samples || [];
  const W = 600, H = 120;
  const c = p.chart;
  if (s.length < 2) {
    c.replaceChildren(el("h2", { text: "Resident set and CPU" }),
      el("p", { class: "muted", text: s.length ? "One sample so far." : "Not sampled (it ran for less than a sampling interval)." }));
    return;
  }
  const t0 = s[0][0], t1 = s[s.length - 1][0] || 1;
  const maxRss = Math.max(...s.map(x => x[1])) || 1;
  const cpu = s.map((x, i) => i === 0 ? 0 : Math.max(0, (x[2] - s[i - 1][2]) / Math.max(1e-6, x[0] - s[i - 1][0]) * 100));
  cpu[0] = cpu[1];
  const maxCpu = Math.max(100, ...cpu);
  const X = t => ((t - t0) / Math.max(1e-6, t1 - t0)) * W;
  const path = ys => ys.map((y, i) => `${i ? "L" : "M"}${X(s[i][0]).toFixed(1)},${(H - y * H).toFixed(1)}`).join("");
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const line = (cls, d) => { const e = document.createElementNS(ns, "path"); e.setAttribute("class", cls); e.setAttribute("d", d); e.setAttribute("vector-effect", "non-scaling-stroke"); return e; };
  svg.append(line("axis", `M0,${H}L${W},${H}`),
    line("rss", path(s.map(x => x[1] / maxRss))),
    line("cpu", path(cpu.map(x => x / maxCpu))));
  const last = s[s.length - 1];
  c.replaceChildren(
    el("h2", {}, "Resident set and CPU",
      el("span", { class: "key-rss", text: `RSS now ${bytes(last[1])}, peak ${bytes(maxRss)}` }),
      el("span", { class: "key-cpu", text: `CPU ${cpu[cpu.length - 1].toFixed(0)}% now, peak ${Math.max(...cpu).toFixed(0)}%` }),
      el("span", { class: "muted", text: `${s.length} samples over ${seconds(t1 - t0)}` })),
    svg);
}

function renderPerf(p) {
  const perf = p.result.perf;
  if (!perf) { p.perf.hidden = true; return; }
  p.perf.hidden = false;
  const rows = Object.entries(perf).filter(([k, v]) => typeof v !== "object" || v === null);
  p.perf.replaceChildren(el("h2", { text: "perf counters" }),
    el("table", {}, ...rows.map(([k, v]) => el("tr", {},
      el("th", { text: k.replace(/_/g, "-") }),
      el("td", { class: "num", text: v == null ? "—" : v.toLocaleString() }),
      el("td", { class: "muted", text: v == null ? (perf.unavailable && perf.unavailable[k]) || "not counted"
        : k === "task_clock" ? seconds(v / 1e9) : "" })))));
}

// A process's captures, one at a time: the one shown follows its output,
// the others hold no connection (a browser allows only six to a host).
function renderOutputs(p, row) {
  const fds = row.fds || [];
  if (!fds.length) return;
  if (!p.tabs) {
    p.tabs = el("div", { class: "tabs", role: "tablist" });
    p.outputs.append(p.tabs);
  }
  for (const f of fds) {
    let t = p.tails.get(f.name);
    if (!t) {
      t = openTail(p, f);
      p.tails.set(f.name, t);
      p.tabs.append(el("button", { type: "button", role: "tab", "data-tab": f.name, text: f.name,
        onclick: () => selectTail(p, f.name) }));
      p.outputs.append(t.card);
    }
    t.f = f;
    t.update();
  }
  if (!p.active) selectTail(p, fds[0].name);
}

function selectTail(p, name) {
  p.active = name;
  for (const b of p.tabs.children) b.setAttribute("aria-selected", String(b.dataset.tab === name));
  for (const [n, t] of p.tails) {
    t.card.hidden = n !== name;
    if (n === name) t.start(); else t.stop();
  }
}

function openTail(p, f) {
  const enc = encodeURIComponent(p.id);
  const base = `/procs/${enc}/output/${encodeURIComponent(f.name)}/data`;
  const pre = el("pre", { class: "tail", "data-fd": f.name });
  const head = el("pre", { class: "tail head", hidden: true });
  const marker = el("div", { class: "dropped", hidden: true });
  const mid = el("pre", { class: "tail head", hidden: true });
  const info = el("span", { class: "muted" });
  const status = el("span", { class: "following muted" });
  const raw = el("a", { href: base, download: `${p.id}.${f.name}`, text: "download" });
  const zst = el("a", { href: base + "?encoding=zstd", download: `${p.id}.${f.name}.zst`, text: "zstd" });
  for (const a of [raw, zst]) a.addEventListener("click", e => download(e, a));
  const card = el("div", { class: "card", hidden: true }, el("h2", {}, f.name, info, raw, zst, status), head, marker, mid, pre);
  // Whether the view follows the bottom: the reader's choice, known from
  // their scrolling, so appending reads no layout to find it out.
  let stuck = true;
  pre.addEventListener("scroll", () => { stuck = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4; });
  const t = {
    card, f, ctl: null, done: false,
    update() {
      const f = t.f;
      info.textContent = f.length == null ? "(a file the process writes)" : bytes(f.length) + (f.open ? "" : ", complete");
    },
    start() {
      if (t.ctl || t.done) return;
      t.ctl = new AbortController();
      p.aborts.push(t.ctl);
      follow(t.ctl);
    },
    // `final`: never to start again (the process is gone or replaced).
    stop(final = false, why = "") {
      if (final) t.done = true;
      if (!t.ctl && !why) return;
      if (t.ctl) { t.ctl.abort(); t.ctl = null; }
      status.textContent = why || "paused";
    },
  };
  const sleep = (ms, signal) => new Promise(res => {
    const stop = () => { clearTimeout(id); res(); };
    const id = setTimeout(() => { signal.removeEventListener("abort", stop); res(); }, ms);
    signal.addEventListener("abort", stop, { once: true });
  });
  // What the page shows of a capture, when it does not show all of it: the
  // parts held but not loaded here and the part the capture dropped. The
  // held parts of a head/tail capture can be loaded (up to SHOW bytes).
  function setMarker(v) {
    const { d, shownHead, heldFrom, tailStart } = v;
    let text;
    marker.replaceChildren();
    if (d) {
      const parts = [], held = (d.start - shownHead) + (tailStart - heldFrom);
      if (d.start > shownHead) parts.push(`${bytes(d.start - shownHead)} not shown here`);
      parts.push(`${bytes(d.stop - d.start)} dropped from the middle by the capture's head/tail bounds`);
      if (tailStart > heldFrom) parts.push(`${bytes(tailStart - heldFrom)} not shown here`);
      text = `⋯ ${parts.join(", then ")}${parts.length > 1 ? " (download for all the capture holds)" : ""} ⋯`;
      marker.title = `bytes ${shownHead}–${d.start} held, ${d.start}–${d.stop} dropped, `
        + `${d.stop}–${tailStart} held; shown: 0–${shownHead}, ${heldFrom}–${tailStart} and from ${tailStart}`;
      marker.append(text);
      if (held > 0 && held <= SHOW) {
        marker.append(" ", el("button", { type: "button", class: "show-held", text: `show the ${bytes(held)}`,
          onclick: e => { e.target.disabled = true; showHeld(v).catch(err => toast("loading failed: " + err.message, true)); } }));
      }
    } else {
      marker.append(`⋯ the first ${bytes(tailStart)} are not shown here (download for all of it) ⋯`);
    }
    marker.hidden = false;
  }
  async function fetchText(start, stop, dec) {
    const r = await api(`${base}?start=${start}&stop=${stop}`);
    if (!r.ok) throw new HttpError(`${r.status} ${r.statusText}`, r.status);
    return dec.decode(await r.arrayBuffer(), { stream: true });
  }
  // The held bytes not shown: the rest of the head after it, the start of
  // the tail before the followed part.
  async function showHeld(v) {
    const { d } = v;
    if (d.start > v.shownHead) {
      v.headAnsi.push(await fetchText(v.shownHead, d.start, v.headDec));
      v.shownHead = d.start;
    }
    if (v.tailStart > v.heldFrom) {
      const a = new Ansi(mid), dec = new TextDecoder();
      a.push(await fetchText(v.heldFrom, v.tailStart, dec) + dec.decode());
      a.finish();
      mid.hidden = false;
      v.heldFrom = v.tailStart;
    }
    setMarker(v);
  }
  // From the last TAIL bytes (after a head/tail capture's head and its
  // dropped middle), then every byte as it comes. A connection that fails
  // is tried again, after a pause that grows, from the byte it reached; if
  // by then the id names another process (the agent restarted, or it was
  // deleted and started again), the page starts over with that one.
  async function follow(ctl) {
    const signal = ctl.signal;
    pre.replaceChildren();
    head.replaceChildren();
    mid.replaceChildren();
    head.hidden = marker.hidden = mid.hidden = true;
    const ansi = new Ansi(pre);
    const dec = new TextDecoder("utf-8");
    // Text is drawn at most every DRAW ms, however many chunks came: each
    // draw lays out what was added (one block of the tail, see Ansi), and
    // only then is the bottom, if followed, scrolled to.
    let queued = "", timer = 0, drawn = -Infinity;
    const flush = () => {
      clearTimeout(timer);
      timer = 0;
      if (!queued) return;
      drawn = performance.now();
      ansi.push(queued);
      queued = "";
      ansi.trim(KEEP);
      if (stuck) pre.scrollTop = pre.scrollHeight;
    };
    // A paused tail draws nothing more: a restarted one may share `pre`.
    signal.addEventListener("abort", () => clearTimeout(timer), { once: true });
    const out = text => {
      queued += text;
      if (!timer) timer = setTimeout(flush, Math.max(0, DRAW - (performance.now() - drawn)));
      if (queued.length > KEEP) flush();
    };
    let pos = null, agentWas = null, backoff = 500;
    try {
      for (;;) {
        try {
          if (agentWas === null) agentWas = agentKey((await apiJson("/agent", { signal })).agent);
          if (pos === null) pos = await begin(signal);
          status.textContent = "following";
          if (await stream(signal)) break;
        } catch (e) {
          if (signal.aborted) return;
          if (e instanceof Unauthorized) { status.textContent = "stopped: " + e.message; return; }
          if (e.status === 404) { status.textContent = "stopped: the process was deleted"; if (page === p) refreshProc(p); return; }
          // An answer that asking again would only repeat (400 "no fd", say).
          if (e.status && e.status < 500) { status.textContent = "stopped: " + e.message; return; }
          status.textContent = `reconnecting (${e.message})`;
          await sleep(backoff, signal);
          backoff = Math.min(backoff * 2, 10000);
          if (signal.aborted) return;
          try {
            const [a, d] = await Promise.all([apiJson("/agent", { signal }), apiJson(`/procs/${enc}`, { signal })]);
            const r = d.procs[p.id];
            if ((agentWas !== null && agentKey(a.agent) !== agentWas) || (p.key && !sameProc(p.key, r))) {
              if (page === p) {
                resetOutputs(p, `${p.id} is another process now (the agent restarted, or it was started again): this is the new one.`);
                refreshProc(p);
              }
              return;
            }
          } catch (e2) {
            if (signal.aborted) return;
            if (e2.status === 404) { status.textContent = "stopped: the process was deleted"; if (page === p) refreshProc(p); return; }
            // Not reachable yet: another pause.
          }
        }
      }
      out(dec.decode());
      flush();
      ansi.finish();
      status.textContent = "complete";
      t.done = true;
    } finally {
      if (!signal.aborted) flush();
      if (t.ctl === ctl) t.ctl = null;
    }

    // Where the tail starts; a head/tail capture's head shown first.
    async function begin(signal) {
      const f = t.f;
      if (f.length == null) return 0;
      let start = Math.max(0, f.length - TAIL);
      const d = f.dropped;
      if (d) {
        const shown = Math.min(HEAD, d.start);
        const r = await api(`${base}?start=0&stop=${shown}`, { signal });
        if (!r.ok) throw new HttpError(`${r.status} ${r.statusText}`, r.status);
        const v = { d: { start: d.start, stop: d.stop }, shownHead: shown, heldFrom: d.stop,
          headAnsi: new Ansi(head), headDec: new TextDecoder() };
        v.headAnsi.push(v.headDec.decode(await r.arrayBuffer(), { stream: true }));
        head.hidden = false;
        v.tailStart = start = Math.max(start, d.stop);
        setMarker(v);
      } else if (start > 0) {
        setMarker({ d: null, tailStart: start });
      }
      return start;
    }

    // Follows from `pos` until the capture ends (true). A follow the agent
    // cut off (a head/tail capture dropped bytes this page had not read
    // yet) goes on from the next byte held; the part dropped is marked
    // where it was.
    async function stream(signal) {
      for (let cuts = 0; ; cuts++) {
        const r = await api(`${base}?start=${pos}&follow=true`, { signal });
        if (!r.ok) throw new HttpError(`${r.status} ${r.statusText}`, r.status);
        backoff = 500;
        let gap = (r.headers.get("x-chaperone-dropped") || "").split("-").map(Number);
        if (gap.length !== 2 || !(gap[1] > pos)) gap = null;
        if (gap && gap[0] <= pos) {
          out(dec.decode() + `\n⋯ ${bytes(gap[1] - pos)} dropped here (head/tail limits) ⋯\n`);
          pos = gap[1];
          gap = null;
        }
        const reader = r.body.getReader();
        try {
          for (;;) {
            const { value, done } = await reader.read();
            if (done) return true;
            cuts = 0;
            // The stream steps over a part dropped before it began: the
            // bytes before it are shown, the mark, then the rest.
            if (gap && pos + value.length >= gap[0]) {
              const before = gap[0] - pos;
              out(dec.decode(value.subarray(0, before), { stream: true }));
              out(dec.decode() + `\n⋯ ${bytes(gap[1] - gap[0])} dropped here (head/tail limits) ⋯\n`);
              pos = gap[1] + (value.length - before);
              gap = null;
              out(dec.decode(value.subarray(before), { stream: true }));
              continue;
            }
            pos += value.length;
            out(dec.decode(value, { stream: true }));
          }
        } catch (e) {
          if (signal.aborted || cuts >= 20) throw e;
        }
      }
    }
  }
  return t;
}

// A download needs the token when there is one, which a plain link cannot
// send: fetch it and hand the browser the bytes.
async function download(e, a) {
  if (!token) return;
  e.preventDefault();
  try {
    const r = await api(a.getAttribute("href"));
    if (!r.ok) throw new Error(`${r.status}`);
    const url = URL.createObjectURL(await r.blob());
    const tmp = el("a", { href: url, download: a.getAttribute("download") });
    document.body.append(tmp);
    tmp.click();
    tmp.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (err) {
    toast("download failed: " + err.message, true);
  }
}

// ---------------------------------------------------------------- ANSI colours

const BASE16 = ["#000", "#c23621", "#25bc24", "#adad27", "#492ee1", "#d338d3", "#33bbc8", "#cbcccd",
  "#818383", "#fc391f", "#31e722", "#eaec23", "#5833ff", "#f935f8", "#14f0f0", "#e9ebeb"];

function color256(n) {
  if (n < 16) return BASE16[n];
  if (n >= 232) { const v = 8 + (n - 232) * 10; return `rgb(${v},${v},${v})`; }
  n -= 16;
  const c = x => (x ? 55 + x * 40 : 0);
  return `rgb(${c(Math.floor(n / 36))},${c(Math.floor(n / 6) % 6)},${c(n % 6)})`;
}

// Escape sequences, matched where an ESC is: CSI (`ESC [` parameters,
// intermediates, final; group 1 and 2), the string sequences (OSC `ESC ]`,
// DCS `ESC P`, SOS `ESC X`, PM `ESC ^`, APC `ESC _`) ended by BEL or ST,
// nF (`ESC` intermediates final, as `ESC ( B`) and the two-byte ones.
const ESC_SEQ = /\x1b(?:\[([0-?]*)[ -\/]*([@-~])|[\]PX^_][\s\S]*?(?:\x07|\x1b\\)|[ -\/]+[0-~]|[0-OQ-WYZ\\`-~])/y;
// What the start of one may look like before its end has come.
const ESC_PREFIX = /^\x1b(?:\[[0-?]*[ -\/]*|[\]PX^_][\s\S]*|[ -\/]+)?$/;

// Renders text with SGR escapes into spans; other escape sequences are
// dropped, and so is a stray ESC. An escape cut by a chunk boundary waits
// for the next chunk (a string sequence for at most 4096 characters).
class Ansi {
  constructor(pre) { this.pre = pre; this.carry = ""; this.cr = false; this.reset(); this.last = null; this.lastKey = ""; this.count = 0; this.block = null; }
  reset() { this.fg = null; this.bg = null; this.attrs = new Set(); this.inverse = false; }
  key() { return `${this.fg}|${this.bg}|${[...this.attrs].join("")}|${this.inverse}`; }
  push(text) {
    text = this.carry + text;
    this.carry = "";
    let at = 0;
    for (;;) {
      const esc = text.indexOf("\x1b", at);
      if (esc < 0) { this.emit(text.slice(at)); return; }
      if (esc > at) this.emit(text.slice(at, esc));
      ESC_SEQ.lastIndex = esc;
      const m = ESC_SEQ.exec(text);
      if (m) {
        if (m[2] === "m") this.sgr(m[1]);
        at = ESC_SEQ.lastIndex;
        continue;
      }
      const rest = text.slice(esc);
      if (rest.length < 4096 && ESC_PREFIX.test(rest)) { this.carry = rest; return; }
      at = esc + 1;
    }
  }
  // The stream has ended: an escape it cut off shows nothing.
  finish() { this.carry = ""; }
  sgr(params) {
    const p = (params || "0").split(/[;:]/).map(x => parseInt(x || "0", 10));
    for (let i = 0; i < p.length; i++) {
      const n = p[i];
      if (n === 0) this.reset();
      else if (n === 1) this.attrs.add("b");
      else if (n === 2) this.attrs.add("d");
      else if (n === 3) this.attrs.add("i");
      else if (n === 4) this.attrs.add("u");
      else if (n === 9) this.attrs.add("s");
      else if (n === 7) this.inverse = true;
      else if (n === 22) { this.attrs.delete("b"); this.attrs.delete("d"); }
      else if (n === 23) this.attrs.delete("i");
      else if (n === 24) this.attrs.delete("u");
      else if (n === 29) this.attrs.delete("s");
      else if (n === 27) this.inverse = false;
      else if (n >= 30 && n <= 37) this.fg = BASE16[n - 30];
      else if (n >= 90 && n <= 97) this.fg = BASE16[n - 90 + 8];
      else if (n >= 40 && n <= 47) this.bg = BASE16[n - 40];
      else if (n >= 100 && n <= 107) this.bg = BASE16[n - 100 + 8];
      else if (n === 39) this.fg = null;
      else if (n === 49) this.bg = null;
      else if (n === 38 || n === 48) {
        let c = null;
        if (p[i + 1] === 5) { c = color256(p[i + 2] & 255); i += 2; }
        else if (p[i + 1] === 2) { c = `rgb(${p[i + 2] & 255},${p[i + 3] & 255},${p[i + 4] & 255})`; i += 4; }
        if (n === 38) this.fg = c; else this.bg = c;
      }
    }
  }
  // The text node that holds a node's characters.
  static text(node) { return node.nodeType === Node.TEXT_NODE ? node : node.firstChild; }
  // The text goes into blocks of about BLOCK characters, each ending where
  // a line does (so that they show as the one text they are): a browser
  // then lays out only the block that grows, not the whole tail, and
  // trimming drops whole blocks.
  //
  // A carriage return not followed by a line feed starts its line again,
  // as on a terminal: the next text replaces what the line showed, so a
  // progress bar redrawn with "\r" shows as its latest state. (A terminal
  // overwrites character by character; a redraw is nearly always the whole
  // line, and keeping a longer old line's end would only show stale text.)
  emit(text) {
    let at = 0;
    for (;;) {
      if (this.cr && at < text.length && text[at] !== "\n" && text[at] !== "\r") this.eraseLine();
      if (at < text.length) this.cr = false;
      const r = text.indexOf("\r", at);
      if (r < 0) { this.lines(text.slice(at)); return; }
      this.lines(text.slice(at, r));
      this.cr = true;
      at = r + 1;
    }
  }
  lines(text) {
    while (text) {
      if (!this.block) this.newBlock();
      const room = BLOCK - this.block.n;
      const nl = text.length < room ? -1 : text.indexOf("\n", Math.max(0, room - 1));
      if (nl < 0) { this.put(text); return; }
      this.put(text.slice(0, nl + 1));
      text = text.slice(nl + 1);
      this.block = null;          // full: what comes next starts another
    }
  }
  // Removes the characters of the line being written (back to the last line
  // feed). A line never spans blocks, so they are all in the current block.
  eraseLine() {
    const blk = this.block;
    while (blk && blk.lastChild) {
      const node = blk.lastChild, t = Ansi.text(node), s = t ? t.data : "";
      const nl = s.lastIndexOf("\n"), cut = s.length - (nl + 1);
      this.count -= cut;
      blk.n -= cut;
      if (nl >= 0) { t.deleteData(nl + 1, cut); return; }
      node.remove();
      if (node === this.last) this.last = null;
    }
  }
  newBlock() {
    this.block = document.createElement("span");
    this.block.className = "blk";
    this.block.n = 0;
    this.pre.append(this.block);
    this.last = null;
  }
  put(text) {
    this.count += text.length;
    this.block.n += text.length;
    const key = this.key();
    if (this.last && key === this.lastKey) {
      Ansi.text(this.last).appendData(text);
      return;
    }
    let node;
    if (key === "null|null||false") {
      node = document.createTextNode(text);
    } else {
      node = document.createElement("span");
      for (const a of this.attrs) node.classList.add("a-" + a);
      const fg = this.inverse ? (this.bg || "#1e1f22") : this.fg;
      const bg = this.inverse ? (this.fg || "#dcdcdc") : this.bg;
      if (fg) node.style.color = fg;
      if (bg) node.style.backgroundColor = bg;
      node.textContent = text;
    }
    this.block.append(node);
    this.last = node;
    this.lastKey = key;
  }
  // Drops the oldest characters once the tail holds more than `limit`
  // (a quarter more, so that it is not done for every chunk): whole blocks,
  // then (one long line) characters of the first.
  trim(limit) {
    if (this.count <= limit * 1.25) return;
    let first;
    while (this.count > limit && (first = this.pre.firstChild) && first !== this.block) {
      this.count -= first.n || 0;
      first.remove();
    }
    let over = this.count - limit;
    const blk = this.pre.firstChild;
    while (over > 0 && blk && blk.firstChild) {
      const node = blk.firstChild;
      const t = Ansi.text(node);
      const len = t ? t.length : 0;
      if (len <= over && node !== this.last) {
        node.remove();
        over -= len;
        this.count -= len;
        blk.n -= len;
      } else {
        const cut = Math.min(over, len);
        t.deleteData(0, cut);
        this.count -= cut;
        blk.n -= cut;
        over -= cut;
        if (!cut) break;
      }
    }
  }
}

// ---------------------------------------------------------------- routing and the loop

let pending = false;
function schedule() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => { pending = false; renderTable(); });
}

// When the open process page last refreshed, and a refresh held back by
// the throttle (one comes at its end, so no change is left unshown).
let procThrottle = -Infinity;
let procTrailing = 0;
listeners.add(ids => {
  table.dirty = true;
  schedule();
  if (page && (ids === null || ids.includes(page.id))) {
    const now = performance.now();
    // Rows of a running process come every second; its page follows at
    // most that often.
    const wait = 900 - (now - procThrottle);
    if (wait <= 0 || (procs.get(page.id) || {}).phase !== "running") {
      clearTimeout(procTrailing);
      procTrailing = 0;
      procThrottle = now;
      refreshProc(page);
    } else if (!procTrailing) {
      const p = page;
      procTrailing = setTimeout(() => {
        procTrailing = 0;
        procThrottle = performance.now();
        if (page === p) refreshProc(p);
      }, wait);
    }
  }
});

function route() {
  if (page) { page.aborts.forEach(c => c.abort()); page = null; }
  const m = location.hash.match(/^#\/proc\/(.+)$/);
  const view = $("#view");
  let id = null;
  if (m) {
    try { id = decodeURIComponent(m[1]); } catch (_) { /* a malformed %-escape */ }
  }
  if (m && id === null) {
    view.replaceChildren(el("div", { class: "page" },
      el("p", {}, el("a", { href: "#/", text: "← all processes" })),
      el("p", { class: "notice", id: "bad-address",
        text: `Not a process's address: "${m[1]}" is not a well-formed (percent-encoded) id.` })));
  } else if (m) {
    view.replaceChildren(procView(id));
  } else {
    view.replaceChildren(table.root ? table.root.root : tableView());
    schedule();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login-ok").addEventListener("click", login);
  $("#token").addEventListener("keydown", e => { if (e.key === "Enter") login(); });
  $("#logout").addEventListener("click", logout);
  for (const b of document.querySelectorAll("[data-shutdown]")) {
    const policy = b.dataset.shutdown;
    const text = {
      idle: "Make the agent refuse new processes and shut down once every process has finished and been deleted?",
      terminate: "Send SIGTERM to every process (SIGKILL after 60 s) and shut the agent down?",
      kill: "Send SIGKILL to every process now and shut the agent down?",
    }[policy];
    b.addEventListener("click", () => act(`shutdown (${policy}) begun`, text, b.textContent, `/shutdown?policy=${policy}`));
  }
  document.addEventListener("keydown", e => { if (e.key === "Escape" && !$("#confirm").hidden) $("#confirm-cancel").click(); });
  window.addEventListener("hashchange", route);
  window.addEventListener("resize", schedule);
  // The clock: elapsed times of running processes and the uptime move on
  // between rows without asking the agent for anything.
  setInterval(() => { renderAgent(); if (!page) schedule(); }, 1000);
  route();
  restartEvents();
});
